//! What the session tells the metrics and `/readyz` as it streams: changes and transactions
//! read, the commits waiting to be durable (commit-to-durable latency, lag in seconds), the
//! server's position (lag in bytes), the WAL the slot holds. (The sinks' lanes tell of
//! themselves: events, bytes, write and flush times, failing.)

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ficus_model::{Lsn, Op, RowChange, TxMeta};
use metrics::{Counter, counter, gauge, histogram};
use tracing::warn;

use crate::health::Health;
use crate::telemetry;

/// Commits remembered until durable, at most (past it, the newest are not timed).
const COMMITS: usize = 100_000;
/// While the slot holds too much WAL, the warning is repeated this often.
const WARN_AGAIN: Duration = Duration::from_secs(300);

pub(crate) struct Observer {
    health: Arc<Health>,
    changes: HashMap<(u32, Op), Counter>,
    transactions: Counter,
    /// Commits read and not yet durable everywhere: end position, commit time (µs since the epoch).
    commits: VecDeque<(Lsn, i64)>,
    /// The transaction in flight: its commit time and its changes so far.
    tx: Option<(i64, u64)>,
    server: Lsn,
    acknowledged: Lsn,
    max_retained_wal: u64,
    warned: Option<Instant>,
}

impl Observer {
    pub fn new(health: Arc<Health>, acknowledged: Lsn, max_retained_wal: u64) -> Observer {
        gauge!(telemetry::MAX_RETAINED_WAL).set(max_retained_wal as f64);
        Observer {
            health,
            changes: HashMap::new(),
            transactions: counter!(telemetry::SOURCE_TRANSACTIONS),
            commits: VecDeque::new(),
            tx: None,
            server: acknowledged,
            acknowledged,
            max_retained_wal,
            warned: None,
        }
    }

    pub fn begin(&mut self, tx: &TxMeta) {
        self.tx = Some((tx.commit_time_micros, 0));
        gauge!(telemetry::TRANSACTIONS_IN_FLIGHT).set(1.0);
        gauge!(telemetry::TRANSACTION_CHANGES).set(0.0);
    }

    pub fn change(&mut self, change: &RowChange) {
        let relation = &change.relation;
        self.changes
            .entry((relation.oid, change.op))
            .or_insert_with(|| {
                counter!(telemetry::SOURCE_CHANGES, "table" => relation.table.to_string(), "op" => change.op.as_str())
            })
            .increment(1);
        if let Some((_, n)) = &mut self.tx {
            *n += 1;
            gauge!(telemetry::TRANSACTION_CHANGES).set(*n as f64);
        }
    }

    pub fn commit(&mut self, end: Lsn) {
        self.transactions.increment(1);
        if let Some((time, _)) = self.tx.take()
            && self.commits.len() < COMMITS
        {
            self.commits.push_back((end, time));
        }
        self.server = self.server.max(end);
        gauge!(telemetry::TRANSACTIONS_IN_FLIGHT).set(0.0);
        gauge!(telemetry::TRANSACTION_CHANGES).set(0.0);
    }

    /// The server says it is at `wal_end`.
    pub fn server(&mut self, wal_end: Lsn) {
        self.server = self.server.max(wal_end);
        self.lag();
    }

    /// Everything up to `durable` is durable in every sink, and the slot is acknowledged up to
    /// `acknowledged`.
    pub fn progress(&mut self, durable: Lsn, acknowledged: Lsn) {
        let now = micros(SystemTime::now());
        while let Some(&(end, time)) = self.commits.front() {
            if end > durable {
                break;
            }
            self.commits.pop_front();
            histogram!(telemetry::COMMIT_TO_DURABLE).record((now - time).max(0) as f64 / 1e6);
        }
        self.acknowledged = self.acknowledged.max(acknowledged);
        self.lag();
    }

    fn lag(&mut self) {
        let behind = self.server.0.saturating_sub(self.acknowledged.0);
        gauge!(telemetry::LAG_BYTES).set(behind as f64);
        let seconds = self
            .commits
            .front()
            .map_or(0.0, |&(_, time)| (micros(SystemTime::now()) - time).max(0) as f64 / 1e6);
        gauge!(telemetry::LAG_SECONDS).set(seconds);
        self.health.update(|s| s.lag_seconds = seconds);
        self.health.acknowledged(self.acknowledged, self.server);
    }

    /// The slot holds `bytes` of WAL: past `max_retained_wal`, a warning (repeated every few
    /// minutes while it lasts).
    pub fn retained(&mut self, bytes: u64, slot: &str) {
        gauge!(telemetry::RETAINED_WAL).set(bytes as f64);
        self.health.update(|s| s.retained_wal = Some(bytes));
        let over = self.max_retained_wal > 0 && bytes > self.max_retained_wal;
        if !over {
            self.warned = None;
            return;
        }
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_AGAIN) {
            self.warned = Some(Instant::now());
            warn!(
                %slot,
                retained_wal_bytes = bytes,
                max_retained_wal = self.max_retained_wal,
                "the slot holds more WAL than max_retained_wal: the server's disk fills while ficus is behind; see docs/operations.md (WAL growing)"
            );
        }
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
