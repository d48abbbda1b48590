//! Sinks: where events go.
//!
//! ```text
//! runtime ──write(events)──▶ Sink ──▶ a file, a broker, a webhook, the store
//!         ◀──flush: Ok = every event written so far is durable──
//! ```
//!
//! A sink is one module (the brokers behind a cargo feature each) with its config type next to
//! it; the config builds the sink, and [`Sink::health`] is what `ficus check` runs. A sink never
//! sees a position of the source: the runtime's delivery lane that drives it knows which commit
//! each write completes, so an `Ok` from [`Sink::flush`] becomes "durable up to that commit" in
//! one place, for every sink.
#![deny(missing_docs)]

use async_trait::async_trait;

pub mod cloudevents;
mod error;
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
mod inflight;
pub mod jsonl;
mod outgoing;
mod routes;
pub mod stdout;
mod template;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

pub use error::SinkError;
pub use outgoing::Outgoing;
pub use routes::Routes;
pub use template::Template;

/// A place events go to.
///
/// **The contract.**
/// - *Durable*: when [`flush`](Sink::flush) returns `Ok`, every event passed to
///   [`write`](Sink::write) before it survives a crash of ficus and of the sink's machine as far
///   as the sink can promise it (each sink's docs say what that means for it: fsynced, acknowledged
///   by the broker, answered 2xx). Only then may the source forget those events' changes.
/// - *Order*: a sink delivers events in the order it is given them; the events of one subject keep
///   their order (a broker partition, a stream, a file).
/// - *Repeats*: at-least-once. After a crash, a restart, or a retried write, a sink may be given
///   events it had already taken; a repeat always has the same event id (and sinks that can, drop
///   it: NATS's duplicate window, the store).
/// - *Errors*: [`SinkError::is_transient`] says whether the runtime retries (backing off, writing
///   again every event not yet durable) or stops with the sink's name, the cause and the hint.
/// - *Memory*: `write` may return before the events are durable (in flight to a broker), but a
///   sink keeps what it needs bounded; the runtime bounds the events in flight per sink.
#[async_trait]
pub trait Sink: Send {
    /// Writes events, in order; they may be buffered or in flight when it returns.
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError>;

    /// Waits until every event written so far is durable.
    async fn flush(&mut self) -> Result<(), SinkError>;

    /// Checks, without writing an event, that the sink can take events: reachable, credentials
    /// accepted, the target there (or creatable). What `ficus check` runs, and `ficus run` before
    /// it creates a slot.
    async fn health(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Closes connections; what is not flushed may be lost (it was not acknowledged).
    async fn close(&mut self) {}

    /// What the sink must say when ficus stops, beyond the logs: events it gave up on (a
    /// webhook's dead letters). `None` when all is well.
    fn summary(&self) -> Option<String> {
        None
    }

    /// Whether the sink reads an event's attributes ([`Outgoing::event`]: its id, subject, …),
    /// or writes its line and nothing else. A sink that only writes lines may be handed events
    /// whose attributes are only those ficus routes them by ([`ficus_model::Event::routing_only`]):
    /// replay then writes the stored lines out without reading each one back. Every sink reads
    /// them unless it says otherwise.
    fn reads_attributes(&self) -> bool {
        true
    }
}
