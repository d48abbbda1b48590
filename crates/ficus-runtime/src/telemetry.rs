//! Metrics: their names (Prometheus conventions: `ficus_…_total` counters, base units,
//! `_seconds`, `_bytes`), their descriptions, and the few helpers the run records them with. They
//! go through the `metrics` facade: without a recorder installed (no `--metrics-addr`) recording
//! them costs next to nothing. docs/operations.md lists them with suggested alert rules.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::RunError;
use crate::health::Role;

/// Row changes of mapped tables read from the stream, by `table` and `op`.
pub const SOURCE_CHANGES: &str = "ficus_source_changes_total";
/// Transactions committed, read from the stream.
pub const SOURCE_TRANSACTIONS: &str = "ficus_source_transactions_total";
/// Events made durable in a sink, by `sink` and `type`.
pub const EVENTS: &str = "ficus_events_total";
/// Bytes of events (their CloudEvents JSON lines) made durable in a sink, by `sink`.
pub const SINK_BYTES: &str = "ficus_sink_bytes_total";
/// A sink's write of a batch, by `sink`.
pub const SINK_WRITE: &str = "ficus_sink_write_seconds";
/// A sink's flush (making what was written durable), by `sink`.
pub const SINK_FLUSH: &str = "ficus_sink_flush_seconds";
/// From a transaction's commit on the source to its events durable in every sink.
pub const COMMIT_TO_DURABLE: &str = "ficus_commit_to_durable_seconds";
/// WAL from what the slot was acknowledged up to, to the server's position.
pub const LAG_BYTES: &str = "ficus_lag_bytes";
/// Since the commit of the oldest transaction not yet durable everywhere (0 when caught up).
pub const LAG_SECONDS: &str = "ficus_lag_seconds";
/// WAL the server keeps for the slot.
pub const RETAINED_WAL: &str = "ficus_slot_retained_wal_bytes";
/// `max_retained_wal` (0: no limit).
pub const MAX_RETAINED_WAL: &str = "ficus_slot_max_retained_wal_bytes";
/// Transactions read and not yet committed (0 or 1: the stream sends one at a time).
pub const TRANSACTIONS_IN_FLIGHT: &str = "ficus_transactions_in_flight";
/// Row changes of the transaction in flight.
pub const TRANSACTION_CHANGES: &str = "ficus_transaction_changes";
/// Backfill rows emitted as snapshot events, by `table`.
pub const BACKFILL_ROWS: &str = "ficus_backfill_rows_total";
/// Backfill chunks delivered, by `table`.
pub const BACKFILL_CHUNKS: &str = "ficus_backfill_chunks_total";
/// Connections to the source re-established after a transient error or a silence.
pub const RECONNECTS: &str = "ficus_reconnects_total";
/// Errors met, by `kind`: `source` (transient, reconnected from), `silence` (a replication
/// connection on which the server said nothing too long), `sink` (a write or flush retried),
/// `fatal` (ficus stopped on it).
pub const ERRORS: &str = "ficus_errors_total";
/// 1 while this ficus holds the lease and streams.
pub const STREAMING: &str = "ficus_streaming";
/// 1 while this ficus waits as a standby.
pub const STANDBY: &str = "ficus_standby";

/// Histogram buckets, in seconds: a millisecond to a minute.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Installs the Prometheus recorder for the process and describes the metrics; the handle
/// renders the scrape. Once per process.
pub fn install() -> Result<PrometheusHandle, RunError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| RunError::Config(format!("cannot start the metrics: {e}")))?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(SOURCE_CHANGES, "Row changes of mapped tables read from the stream.");
    describe_counter!(SOURCE_TRANSACTIONS, "Transactions committed, read from the stream.");
    describe_counter!(EVENTS, "Events made durable in a sink.");
    describe_counter!(SINK_BYTES, Unit::Bytes, "Bytes of events made durable in a sink.");
    describe_histogram!(SINK_WRITE, Unit::Seconds, "A sink's write of a batch of events.");
    describe_histogram!(
        SINK_FLUSH,
        Unit::Seconds,
        "A sink's flush: what was written made durable."
    );
    describe_histogram!(
        COMMIT_TO_DURABLE,
        Unit::Seconds,
        "From a transaction's commit on the source to its events durable in every sink."
    );
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "WAL from the acknowledged position to the server's."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Since the commit of the oldest transaction not yet durable everywhere."
    );
    describe_gauge!(RETAINED_WAL, Unit::Bytes, "WAL the server keeps for the slot.");
    describe_gauge!(MAX_RETAINED_WAL, Unit::Bytes, "max_retained_wal (0: no limit).");
    describe_gauge!(TRANSACTIONS_IN_FLIGHT, "Transactions read and not yet committed.");
    describe_gauge!(TRANSACTION_CHANGES, "Row changes of the transaction in flight.");
    describe_counter!(BACKFILL_ROWS, "Backfill rows emitted as snapshot events.");
    describe_counter!(BACKFILL_CHUNKS, "Backfill chunks delivered.");
    describe_counter!(RECONNECTS, "Connections to the source re-established.");
    describe_counter!(ERRORS, "Errors met, by kind.");
    describe_gauge!(STREAMING, "1 while this ficus holds the lease and streams.");
    describe_gauge!(STANDBY, "1 while this ficus waits as a standby.");
}

/// Counts an error of `kind`.
pub fn error(kind: &'static str) {
    metrics::counter!(ERRORS, "kind" => kind).increment(1);
}

/// Counts a reconnect after an error of `kind`.
pub fn reconnected(kind: &'static str) {
    metrics::counter!(RECONNECTS).increment(1);
    error(kind);
}

/// Records the role.
pub fn role(role: Role) {
    gauge!(STREAMING).set(f64::from(u8::from(role == Role::Streaming)));
    gauge!(STANDBY).set(f64::from(u8::from(role == Role::Standby)));
}

/// A duration as a histogram sample.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
