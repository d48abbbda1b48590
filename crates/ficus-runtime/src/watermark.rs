//! The watermark rule of the backfill, as pure logic. See `docs/backfill.md`
//! for the algorithm and its proof sketch.
//!
//! ```text
//! stream:  ... L ... T1 ... T2 ... H ...
//!                 chunk read with snapshot S (between L and H)
//! at H:    emit the chunk's rows, except keys changed by a transaction that
//!          committed before H and that S does not see
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// A snapshot as `pg_current_snapshot()` prints it: `xmin:xmax:xip,xip,...`,
/// with 64-bit (epoch-extended) transaction ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Every transaction below it had finished when the snapshot was taken.
    pub xmin: u64,
    /// No transaction from it on had finished.
    pub xmax: u64,
    /// Transactions in between that were still running.
    pub xip: Vec<u64>,
}

/// A snapshot text that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot {0:?}: expected xmin:xmax:xip,...")]
pub struct ParseSnapshotError(String);

impl FromStr for Snapshot {
    type Err = ParseSnapshotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSnapshotError(s.to_owned());
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(err());
        };
        let mut xip: Vec<u64> = if xip.is_empty() {
            vec![]
        } else {
            xip.split(',')
                .map(|x| x.parse().map_err(|_| err()))
                .collect::<Result<_, _>>()?
        };
        xip.sort_unstable();
        Ok(Snapshot {
            xmin: xmin.parse().map_err(|_| err())?,
            xmax: xmax.parse().map_err(|_| err())?,
            xip,
        })
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xip: Vec<String> = self.xip.iter().map(u64::to_string).collect();
        write!(f, "{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }
}

impl Snapshot {
    /// Whether the snapshot sees (the effects of) a transaction that committed.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }

    /// The 64-bit id of a 32-bit xid from the stream, taken as the one nearest
    /// to this snapshot's `xmax` (xids in use are within 2^31 of each other).
    pub fn widen(&self, xid: u32) -> u64 {
        const HALF: i64 = 1 << 31;
        let near = self.xmax as i64;
        let candidate = (near & !0xFFFF_FFFF) | i64::from(xid);
        let widened = if candidate - near > HALF {
            candidate - (1 << 32)
        } else if near - candidate > HALF {
            candidate + (1 << 32)
        } else {
            candidate
        };
        widened.max(0) as u64
    }
}

/// What the stream changed in a table while it is backfilled: the keys each
/// transaction touched, and every transaction seen committing.
#[derive(Debug, Default)]
pub struct Tracker {
    /// key (as text) → the 32-bit xids of the committed transactions that changed it.
    changed: HashMap<String, Vec<u32>>,
    /// Transactions seen committing since tracking started.
    committed: HashSet<u32>,
    /// Of a table read by a full scan: every transaction that changed it since
    /// tracking started, with a hash of each row version it wrote (the stream
    /// delivered those).
    written: HashMap<u32, HashSet<u64>>,
    /// ...and of each row version it deleted or replaced (its old row).
    removed: HashMap<u32, HashSet<u64>>,
}

/// What to do with a row version read by a full scan, at the high watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionVerdict {
    /// Emit it.
    Emit,
    /// Leave it out: the stream delivered the transaction that wrote it.
    Skip,
    /// Read the chunk again: the stream delivered the deletion or update of this
    /// version, which the chunk's snapshot does not see.
    ReadAgain,
}

impl Tracker {
    /// Records that a transaction that committed changed a key (call it for both
    /// the old and the new key of an update that moves a row).
    pub fn record(&mut self, xid: u32, key: &str) {
        let xids = self.changed.entry(key.to_owned()).or_default();
        if !xids.contains(&xid) {
            xids.push(xid);
        }
    }

    /// Records that a transaction changed a table read by a full scan: the
    /// hashes of the row version it wrote (`new`, none for a delete) and of the
    /// one it deleted or replaced (`old`, the whole row: replica identity FULL).
    pub fn wrote(&mut self, xid: u32, new: Option<u64>, old: Option<u64>) {
        self.written.entry(xid).or_default().extend(new);
        self.removed.entry(xid).or_default().extend(old);
    }

    /// The hashes of the rows that transactions the snapshot does not see
    /// deleted or replaced, as far as the stream has delivered them.
    pub fn removed_unseen(&self, snapshot: &Snapshot) -> HashSet<u64> {
        self.removed
            .iter()
            .filter(|(x, _)| !snapshot.sees(snapshot.widen(**x)))
            .flat_map(|(_, rows)| rows.iter().copied())
            .collect()
    }

    /// What to do with a row version, of hash `row`, that a full scan read with
    /// `snapshot`: created by `xmin`, deleted, updated or locked by `xmax` (0 if
    /// none); `removed_unseen` is [`Tracker::removed_unseen`] of the snapshot.
    ///
    /// A row the stream deleted or replaced in a transaction the snapshot does not
    /// see would follow that change: read again (the next snapshot sees it). The
    /// deletion may come after the read, so its `xmax` alone does not tell: the
    /// old row's content does. A version the stream delivered (its writer and its
    /// content match) is left out. Both must match: a frozen row keeps its old
    /// `xmin`, which may equal a recent xid after wraparound. Identical rows, or
    /// an `xmax` that is a multixact, cost at most a read again.
    pub fn version(
        &self,
        snapshot: &Snapshot,
        removed_unseen: &HashSet<u64>,
        xmin: u32,
        xmax: u32,
        row: u64,
    ) -> VersionVerdict {
        let deleted_unseen = xmax != 0 && self.removed.contains_key(&xmax) && !snapshot.sees(snapshot.widen(xmax));
        if deleted_unseen || removed_unseen.contains(&row) {
            VersionVerdict::ReadAgain
        } else if self.written.get(&xmin).is_some_and(|rows| rows.contains(&row)) {
            VersionVerdict::Skip
        } else {
            VersionVerdict::Emit
        }
    }

    /// Records that a transaction committed (whatever it changed).
    pub fn committed(&mut self, xid: u32) {
        self.committed.insert(xid);
    }

    /// Whether a chunk row read with `snapshot` may be emitted at the high
    /// watermark: no transaction that the snapshot does not see changed its key.
    pub fn keeps(&self, snapshot: &Snapshot, key: &str) -> bool {
        self.changed
            .get(key)
            .is_none_or(|xids| xids.iter().all(|&x| snapshot.sees(snapshot.widen(x))))
    }

    /// Transactions the snapshot does not see that have committed (per the
    /// server, `committed_per_server`) but were never seen committing here: they
    /// committed before tracking started, so their keys are unknown and the
    /// chunk must be read again.
    pub fn unseen(&self, snapshot: &Snapshot, committed_per_server: &[u64]) -> Vec<u64> {
        committed_per_server
            .iter()
            .copied()
            .filter(|&x| !snapshot.sees(x) && !self.committed.iter().any(|&c| snapshot.widen(c) == x))
            .collect()
    }

    /// Forgets transactions every later snapshot sees (`xmin` never goes back).
    pub fn prune(&mut self, snapshot: &Snapshot) {
        self.changed.retain(|_, xids| {
            xids.retain(|&x| snapshot.widen(x) >= snapshot.xmin);
            !xids.is_empty()
        });
        self.committed.retain(|&x| snapshot.widen(x) >= snapshot.xmin);
        // What the writers wrote stays: a later chunk may read it anywhere.
        self.removed.retain(|&x, _| snapshot.widen(x) >= snapshot.xmin);
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.changed.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(s: &str) -> Snapshot {
        s.parse().unwrap()
    }

    #[test]
    fn snapshots_parse_and_see() {
        let s = snap("100:110:107,104");
        assert_eq!(s.xip, vec![104, 107]);
        assert_eq!(s.to_string(), "100:110:104,107");
        assert!(s.sees(99) && s.sees(105) && s.sees(109));
        assert!(!s.sees(104) && !s.sees(107) && !s.sees(110) && !s.sees(200));
        assert_eq!(snap("5:5:").xip, Vec::<u64>::new());
        assert!("5:5".parse::<Snapshot>().is_err());
        assert!("a:5:".parse::<Snapshot>().is_err());
    }

    #[test]
    fn stream_xids_widen_across_the_epoch() {
        let epoch1 = 1u64 << 32;
        let s = Snapshot {
            xmin: epoch1 + 10,
            xmax: epoch1 + 20,
            xip: vec![],
        };
        assert_eq!(s.widen(15), epoch1 + 15);
        // an xid from just before the wraparound belongs to the previous epoch
        assert_eq!(s.widen(u32::MAX - 5), epoch1 - 6);
        let s = Snapshot {
            xmin: epoch1 - 10,
            xmax: epoch1 - 5,
            xip: vec![],
        };
        assert_eq!(s.widen(3), epoch1 + 3);
    }

    #[test]
    fn keys_changed_by_unseen_transactions_are_dropped() {
        // S was taken while 104 ran; 103 had committed; 112 started after S.
        let s = snap("104:110:104");
        let mut t = Tracker::default();
        t.record(103, "a"); // committed before S: the chunk has it
        t.record(104, "b"); // committed before H but after S: the chunk is stale for b
        t.record(112, "c"); // started after S
        assert!(t.keeps(&s, "a"));
        assert!(!t.keeps(&s, "b"));
        assert!(!t.keeps(&s, "c"));
        assert!(t.keeps(&s, "untouched"));
    }

    #[test]
    fn the_procarray_gap_is_caught() {
        // 104 wrote its commit record before the low watermark, so the stream emitted it
        // before tracking this chunk's window; S still saw it as running.
        let s = snap("104:110:104");
        let mut t = Tracker::default();
        t.record(104, "b");
        t.committed(104);
        assert!(!t.keeps(&s, "b"), "tracking from the backfill's start catches it");
        // Had it committed before tracking started at all, the server says so: read again.
        let fresh = Tracker::default();
        assert_eq!(fresh.unseen(&s, &[104]), vec![104]);
        assert!(t.unseen(&s, &[104]).is_empty());
        assert!(
            fresh.unseen(&s, &[103]).is_empty(),
            "a transaction S sees needs nothing"
        );
    }

    #[test]
    fn full_scan_versions_defer_to_the_stream() {
        let s = snap("104:110:104");
        let mut t = Tracker::default();
        t.wrote(100, Some(7), None); // inserted a row the chunk sees: the stream delivered it
        t.wrote(104, None, Some(9)); // deleted row 9, which the chunk still sees: the chunk is stale
        t.wrote(103, None, Some(5)); // deleted row 5 before S: the chunk does not have it
        let gone = t.removed_unseen(&s);
        assert_eq!(gone, HashSet::from([9]));
        assert_eq!(t.version(&s, &gone, 100, 0, 7), VersionVerdict::Skip);
        assert_eq!(
            t.version(&s, &gone, 100, 0, 8),
            VersionVerdict::Emit,
            "a frozen row whose old xmin equals a recent xid"
        );
        assert_eq!(
            t.version(&s, &gone, 3, 0, 6),
            VersionVerdict::Emit,
            "older than tracking"
        );
        assert_eq!(
            t.version(&s, &gone, 3, 0, 9),
            VersionVerdict::ReadAgain,
            "deleted after the read: xmax was not set yet"
        );
        assert_eq!(t.version(&s, &gone, 3, 104, 6), VersionVerdict::ReadAgain);
        assert_eq!(
            t.version(&s, &gone, 3, 99, 6),
            VersionVerdict::Emit,
            "deleted by one it does not know (aborted, or a lock)"
        );
        assert_eq!(t.version(&s, &gone, 3, 103, 6), VersionVerdict::Emit, "S sees 103");
        t.prune(&snap("120:130:"));
        assert!(t.removed_unseen(&snap("120:130:")).is_empty());
        assert_eq!(
            t.version(&s, &gone, 100, 0, 7),
            VersionVerdict::Skip,
            "what writers wrote outlives pruning"
        );
    }

    #[test]
    fn pruning_forgets_what_every_later_snapshot_sees() {
        let mut t = Tracker::default();
        t.record(90, "a");
        t.record(120, "a");
        t.record(95, "b");
        t.committed(95);
        t.prune(&snap("100:130:"));
        assert_eq!(t.len(), 1);
        assert!(!t.keeps(&snap("100:115:"), "a"), "120 is kept");
        assert!(t.unseen(&snap("100:130:"), &[]).is_empty());
    }
}
