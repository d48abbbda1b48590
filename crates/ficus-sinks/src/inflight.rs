//! Publishes awaiting the broker's acknowledgement: NATS publish acks, RabbitMQ confirms, Kafka
//! delivery reports. A broker acknowledges in order, so they are awaited oldest first; `write`
//! awaits the oldest past a window, `flush` awaits them all (and on a failure drops those still
//! to come: the runtime writes every event that is not durable again).

use std::collections::VecDeque;
use std::future::IntoFuture;

/// Acknowledgements awaited at most at once; past it, `write` waits for the oldest.
pub(crate) const WINDOW: usize = 4_096;

/// Acknowledgements to come, oldest first.
pub(crate) struct InFlight<F>(VecDeque<F>);

impl<F: IntoFuture> InFlight<F> {
    pub fn new() -> InFlight<F> {
        InFlight(VecDeque::new())
    }

    pub fn push(&mut self, ack: F) {
        self.0.push_back(ack);
    }

    pub fn is_full(&self) -> bool {
        self.0.len() >= WINDOW
    }

    /// Every acknowledgement to come, leaving none here.
    pub fn take(&mut self) -> InFlight<F> {
        InFlight(std::mem::take(&mut self.0))
    }

    /// Awaits them all, oldest first, each checked by `check`; at the first failure those still
    /// to come are dropped (the runtime writes every event that is not durable again).
    pub async fn settle<E>(mut self, mut check: impl FnMut(F::Output) -> Result<(), E>) -> Result<(), E> {
        while let Some(ack) = self.oldest().await {
            check(ack)?;
        }
        Ok(())
    }

    /// The oldest acknowledgement's outcome, once it comes.
    pub async fn oldest(&mut self) -> Option<F::Output> {
        match self.0.pop_front() {
            Some(ack) => Some(ack.into_future().await),
            None => None,
        }
    }
}
