//! Waiting between retries: 100 ms, doubling to 10 s, with ±20 % jitter so that many ficus
//! instances (or lanes) that failed together do not retry together. One helper for the source
//! and the sinks.

use std::time::{Duration, Instant};

use ficus_postgres::SourceError;

use crate::RunError;

/// The first wait.
pub(crate) const FIRST: Duration = Duration::from_millis(100);
/// The longest wait.
pub(crate) const MAX: Duration = Duration::from_secs(10);

/// The waits of one run of failures.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: FIRST }
    }

    /// The next wait, jittered; the one after is twice as long (up to [`MAX`]).
    pub fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX);
        jitter(base)
    }

    /// Starts over from the first wait.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// The retries of one thing that fails transiently (the source's connections): the backoff, and the
/// give-up limit counted from the first failure since the last success.
#[derive(Debug)]
pub(crate) struct Retry {
    what: &'static str,
    backoff: Backoff,
    failing_since: Option<Instant>,
    give_up: Option<Duration>,
}

impl Retry {
    pub fn new(what: &'static str, give_up: Option<Duration>) -> Retry {
        Retry {
            what,
            backoff: Backoff::new(),
            failing_since: None,
            give_up,
        }
    }

    /// What is retried, for the log.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// It failed with `error`: the wait before the next attempt, or [`RunError::GaveUp`] when it
    /// has been failing for longer than the limit.
    pub fn failed(&mut self, error: SourceError) -> Result<Duration, RunError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if let Some(limit) = self.give_up
            && since.elapsed() >= limit
        {
            return Err(RunError::GaveUp {
                what: self.what.to_owned(),
                after: limit,
                error,
            });
        }
        crate::telemetry::reconnected("source");
        Ok(self.backoff.next())
    }

    /// It worked: the next failure starts over.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.failing_since = None;
    }
}

/// `d` ± 20 %, from the clock's low bits (no randomness needed beyond spreading retries).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_max_with_bounded_jitter() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        let mut base = FIRST;
        for w in waits {
            assert!(
                w >= base.mul_f64(0.8) && w <= base.mul_f64(1.2),
                "{w:?} around {base:?}"
            );
            base = (base * 2).min(MAX);
        }
        b.reset();
        assert!(b.next() <= FIRST.mul_f64(1.2));
    }

    fn refused() -> SourceError {
        SourceError::Silent("no word for 1 s".into())
    }

    #[test]
    fn gives_up_after_failing_for_the_limit_and_starts_over_on_success() {
        let mut r = Retry::new("connecting", Some(Duration::from_millis(30)));
        assert!(r.failed(refused()).is_ok());
        std::thread::sleep(Duration::from_millis(40));
        match r.failed(refused()) {
            Err(RunError::GaveUp { what, after, .. }) => {
                assert_eq!(what, "connecting");
                assert_eq!(after, Duration::from_millis(30));
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        r.succeeded();
        let wait = r.failed(refused()).expect("the limit counts from the last success");
        assert!(wait <= FIRST.mul_f64(1.2), "the backoff starts over: {wait:?}");
    }

    #[test]
    fn without_a_limit_it_never_gives_up() {
        let mut r = Retry::new("connecting", None);
        let waits: Vec<Duration> = (0..20).map(|_| r.failed(refused()).unwrap()).collect();
        assert!(waits.last().unwrap() <= &MAX.mul_f64(1.2));
    }
}
