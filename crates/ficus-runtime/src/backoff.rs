//! Waiting between retries: 100 ms, doubling to 10 s, with ±20 % jitter so that many ficus
//! instances (or lanes) that failed together do not retry together. One helper for the source
//! and the sinks.

use std::time::Duration;

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
}
