//! Where ficus was: the last position it confirmed, on which slot of which source — and what it
//! makes, at start, of the slot it finds.
//!
//! ```text
//! sinks flushed ──▶ record the position (store checkpoint, or .ficus/slots/SLOT.json) ──▶ acknowledge
//! start: record + slot + IDENTIFY_SYSTEM ──judge──▶ create | stream from max(record, slot) | gap
//! ```
//!
//! The position is recorded before the slot is acknowledged, so the slot never confirms more than
//! the record says. A slot that is missing, invalidated, ahead of the record (re-created or moved
//! by someone else), a source that is another cluster, or whose history went back before the
//! record: each is a **gap** — changes ficus never delivered and can no longer read. ficus then
//! refuses to stream, names the range, and `--resync` repairs it (see `docs/delivery.md`).

use std::fmt;
use std::path::{Path, PathBuf};

use ficus_model::Lsn;
use ficus_postgres::SystemInfo;
use ficus_postgres::slot::SlotInfo;
use serde::{Deserialize, Serialize};

use crate::RunError;

/// The source a position belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The database.
    pub database: String,
    /// The cluster's timeline when the position was recorded.
    pub timeline: u32,
}

impl Source {
    /// The source as it describes itself now.
    pub fn of(system: &SystemInfo, database: &str) -> Source {
        Source {
            system_id: system.system_id.clone(),
            database: database.to_owned(),
            timeline: system.timeline,
        }
    }

    /// What event ids derive from: the system identifier and the database.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.system_id, self.database)
    }

    /// As the store keeps it with its checkpoint.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a source serializes")
    }
}

/// What ficus last confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Every event up to here is durable in every sink.
    pub lsn: Lsn,
    /// Of which source; `None` when an older ficus recorded it (the store's checkpoint of format
    /// version 1): then the position is only a lower bound, and only a missing slot is a gap.
    pub source: Option<Source>,
}

impl Position {
    /// From the store's checkpoint.
    pub fn from_checkpoint(saved: &ficus_store::SavedCheckpoint) -> Position {
        Position {
            lsn: Lsn(saved.lsn),
            source: saved.source.as_deref().and_then(|s| serde_json::from_str(s).ok()),
        }
    }
}

/// The position's file when there is no store: `.ficus/slots/SLOT.json` next to the config.
pub fn file(config_dir: &Path, slot: &str) -> PathBuf {
    config_dir.join(".ficus").join("slots").join(format!("{slot}.json"))
}

#[derive(Serialize, Deserialize)]
struct PositionFile {
    slot: String,
    lsn: Lsn,
    source: Source,
}

/// Reads a position file, `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Position>, RunError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RunError::Config(format!("{}: {e}", path.display()))),
    };
    let damaged = |why: String| {
        RunError::Config(format!(
            "{}: {why}\nhint: it records where ficus was in the stream; restore it, or remove it and start ficus with --resync",
            path.display()
        ))
    };
    let file: PositionFile = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
    Ok(Some(Position {
        lsn: file.lsn,
        source: Some(file.source),
    }))
}

/// Writes a position file durably.
pub fn save(path: &Path, slot: &str, lsn: Lsn, source: &Source) -> Result<(), RunError> {
    let file = PositionFile {
        slot: slot.to_owned(),
        lsn,
        source: source.clone(),
    };
    crate::state::write_durably(path, &serde_json::to_vec_pretty(&file).expect("a position serializes"))
}

/// What to do with the slot found at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// No slot, and ficus never streamed from one of this name: create it.
    Create,
    /// The slot is the one ficus streamed from: stream from here.
    Stream {
        /// The later of the slot's confirmed position and the record.
        from: Lsn,
    },
    /// Changes were lost: refuse, unless asked to resync.
    Gap(Gap),
}

/// Changes ficus never delivered and cannot read any more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The slot.
    pub slot: String,
    /// What happened.
    #[serde(flatten)]
    pub cause: Cause,
    /// Everything committed up to here was delivered.
    #[serde(rename = "lost_after")]
    pub after: Lsn,
    /// What may be lost ends before here, when that is known (else: up to the repair).
    #[serde(rename = "lost_before", default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Lsn>,
}

/// Why changes were lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum Cause {
    /// The slot does not exist.
    SlotMissing,
    /// The server invalidated the slot (`max_slot_wal_keep_size`): it removed WAL the slot held.
    SlotInvalidated,
    /// The slot is ahead of what ficus confirmed: re-created, or moved by another consumer.
    SlotMoved,
    /// The source is another cluster or database than the one ficus streamed from.
    OtherSource {
        /// The source of the record.
        recorded: String,
        /// The source found.
        found: String,
    },
    /// The source's history went back before the record: restored from a backup, or failed over
    /// to a server that was behind.
    SourceRewound {
        /// Where the history the record belongs to was left.
        left_at: Lsn,
    },
    /// The publication was dropped while the slot still had changes to decode.
    PublicationDropped {
        /// The publication.
        publication: String,
    },
    /// The publication was changed, while ficus streamed, so that it no longer sends what the
    /// mappings read.
    PublicationChanged {
        /// The publication.
        publication: String,
        /// What is wrong with it now.
        what: String,
        /// The statement that sets it right.
        fix: Option<String>,
    },
}

impl Cause {
    /// A short name, for the `ficus.gap` event and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Cause::SlotMissing => "slot-missing",
            Cause::SlotInvalidated => "slot-invalidated",
            Cause::SlotMoved => "slot-moved",
            Cause::OtherSource { .. } => "other-source",
            Cause::SourceRewound { .. } => "source-rewound",
            Cause::PublicationDropped { .. } => "publication-dropped",
            Cause::PublicationChanged { .. } => "publication-changed",
        }
    }
}

impl Gap {
    /// The publication does not send what the mappings read (`problems`), since after `after`.
    pub fn publication_changed(
        slot: &str,
        publication: &str,
        problems: &[ficus_postgres::publication::Problem],
        after: Lsn,
    ) -> Gap {
        let what: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
        let fix: Vec<&str> = problems.iter().map(|p| p.fix.as_str()).collect();
        Gap {
            slot: slot.to_owned(),
            cause: Cause::PublicationChanged {
                publication: publication.to_owned(),
                what: what.join("; "),
                fix: Some(fix.join(" ")),
            },
            after,
            before: None,
        }
    }

    /// The lost range, in words.
    pub fn range(&self) -> String {
        match self.before {
            Some(before) => format!("changes committed after {} and before {before}", self.after),
            None => format!("changes committed after {}", self.after),
        }
    }

    /// How to repair it.
    pub fn repair(&self) -> String {
        let resync = format!(
            "run `ficus run --resync` (or `ficus backfill --resync`): it drops slot {0} if it is there, creates it again, \
             backfills every table that has a snapshot mapping so consumers get the current state as snapshot events, \
             and first sends a `ficus.gap` event naming the lost range so they know to reconcile",
            self.slot
        );
        match &self.cause {
            Cause::PublicationChanged { fix: Some(fix), .. } => {
                format!("restore the publication ({fix}), then {resync}")
            }
            Cause::OtherSource { .. } => format!(
                "if this is the source you mean to stream from now, {resync}; if not, point [source] url back at the old one"
            ),
            _ => resync,
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = &self.slot;
        match &self.cause {
            Cause::SlotMissing => write!(f, "slot {slot} is gone (dropped, or lost with the server's data)")?,
            Cause::SlotInvalidated => write!(
                f,
                "slot {slot} was invalidated (wal_status = lost): the server removed WAL it still held \
                 (max_slot_wal_keep_size)"
            )?,
            Cause::SlotMoved => write!(
                f,
                "slot {slot} is at {}, but ficus confirmed only up to {}: it was re-created, or advanced by \
                 something other than ficus",
                self.before.unwrap_or(self.after),
                self.after
            )?,
            Cause::OtherSource { recorded, found } => write!(
                f,
                "ficus streamed slot {slot} from source {recorded} (system identifier/database), but this source \
                 is {found}: a restored dump, an upgraded cluster or another server, whose positions and event ids \
                 are not those of the events delivered so far"
            )?,
            Cause::SourceRewound { left_at } => write!(
                f,
                "the source's history went back to {left_at}, before what ficus confirmed: it was restored from a \
                 backup or failed over to a server that was behind, so events delivered after {left_at} describe \
                 changes it no longer has"
            )?,
            Cause::PublicationDropped { publication } => write!(
                f,
                "publication {publication} was dropped while slot {slot} still had changes to decode, and Postgres \
                 cannot decode past the drop"
            )?,
            Cause::PublicationChanged { publication, what, .. } => write!(
                f,
                "publication {publication} was changed while ficus streamed: {what}; what it did not send since \
                 ficus last checked it never reached ficus"
            )?,
        }
        write!(f, " (lost: {})", self.range())
    }
}

impl std::error::Error for Gap {}

/// What to do with the slot found at start, given what ficus recorded and what the source says.
pub fn judge(
    slot_name: &str,
    record: Option<&Position>,
    slot: Option<&SlotInfo>,
    here: &Source,
    system: &SystemInfo,
) -> Start {
    let gap = |cause, after, before| {
        Start::Gap(Gap {
            slot: slot_name.to_owned(),
            cause,
            after,
            before,
        })
    };
    if let Some(Position {
        lsn,
        source: Some(recorded),
    }) = record
    {
        if (recorded.system_id.as_str(), recorded.database.as_str())
            != (here.system_id.as_str(), here.database.as_str())
        {
            let cause = Cause::OtherSource {
                recorded: recorded.identity(),
                found: here.identity(),
            };
            return gap(cause, *lsn, None);
        }
        if recorded.timeline != here.timeline
            && let Some(left_at) = system.left_timeline_at(recorded.timeline)
            && *lsn > left_at
        {
            return gap(Cause::SourceRewound { left_at }, left_at, None);
        }
    }
    if let Some(record) = record
        && record.lsn > system.wal_end
    {
        return gap(
            Cause::SourceRewound {
                left_at: system.wal_end,
            },
            system.wal_end,
            None,
        );
    }
    match (slot, record) {
        (None, None) => Start::Create,
        (None, Some(record)) => gap(Cause::SlotMissing, record.lsn, None),
        (Some(slot), record) if slot.is_invalidated() => {
            let after = record.map_or(slot.confirmed_flush, |r| r.lsn.max(slot.confirmed_flush));
            gap(Cause::SlotInvalidated, after, None)
        }
        (Some(slot), Some(Position { lsn, source: Some(_) })) if slot.confirmed_flush > *lsn => {
            gap(Cause::SlotMoved, *lsn, Some(slot.confirmed_flush))
        }
        (Some(slot), record) => Start::Stream {
            from: record.map_or(slot.confirmed_flush, |r| r.lsn.max(slot.confirmed_flush)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(timeline: u32, wal_end: u64, history: Vec<(u32, Lsn)>) -> SystemInfo {
        SystemInfo {
            system_id: "7001".into(),
            timeline,
            wal_end: Lsn(wal_end),
            history,
        }
    }

    fn here(system: &SystemInfo) -> Source {
        Source::of(system, "shop")
    }

    fn slot(confirmed: u64, wal_status: &str) -> SlotInfo {
        SlotInfo {
            confirmed_flush: Lsn(confirmed),
            wal_status: Some(wal_status.into()),
            active_pid: None,
        }
    }

    fn recorded(lsn: u64, source: &Source) -> Position {
        Position {
            lsn: Lsn(lsn),
            source: Some(source.clone()),
        }
    }

    fn cause(start: Start) -> Option<(Cause, Lsn, Option<Lsn>)> {
        match start {
            Start::Gap(g) => Some((g.cause, g.after, g.before)),
            _ => None,
        }
    }

    #[test]
    fn a_first_start_creates_and_an_intact_slot_streams_from_the_later_position() {
        let sys = system(1, 0x900, vec![]);
        let me = here(&sys);
        assert_eq!(judge("s", None, None, &me, &sys), Start::Create);
        // Recorded, then killed before the acknowledgement reached the server: the record is ahead.
        let r = recorded(0x500, &me);
        assert_eq!(
            judge("s", Some(&r), Some(&slot(0x400, "reserved")), &me, &sys),
            Start::Stream { from: Lsn(0x500) }
        );
        assert_eq!(
            judge("s", Some(&r), Some(&slot(0x500, "extended")), &me, &sys),
            Start::Stream { from: Lsn(0x500) }
        );
        // No record (ficus 0.1, or .ficus lost): the slot is adopted.
        assert_eq!(
            judge("s", None, Some(&slot(0x400, "reserved")), &me, &sys),
            Start::Stream { from: Lsn(0x400) }
        );
    }

    #[test]
    fn a_missing_invalidated_or_moved_slot_is_a_gap_with_its_range() {
        let sys = system(1, 0x900, vec![]);
        let me = here(&sys);
        let r = recorded(0x500, &me);
        assert_eq!(
            cause(judge("s", Some(&r), None, &me, &sys)),
            Some((Cause::SlotMissing, Lsn(0x500), None))
        );
        assert_eq!(
            cause(judge("s", Some(&r), Some(&slot(0x400, "lost")), &me, &sys)),
            Some((Cause::SlotInvalidated, Lsn(0x500), None))
        );
        // Invalidated without a record: what the slot confirmed is what was delivered.
        assert_eq!(
            cause(judge("s", None, Some(&slot(0x400, "lost")), &me, &sys)),
            Some((Cause::SlotInvalidated, Lsn(0x400), None))
        );
        assert_eq!(
            cause(judge("s", Some(&r), Some(&slot(0x700, "reserved")), &me, &sys)),
            Some((Cause::SlotMoved, Lsn(0x500), Some(Lsn(0x700))))
        );
    }

    #[test]
    fn an_old_record_without_its_source_is_a_lower_bound() {
        let sys = system(1, 0x900, vec![]);
        let me = here(&sys);
        let old = Position {
            lsn: Lsn(0x300),
            source: None,
        };
        // The old store checkpoint lagged behind the slot: not a gap.
        assert_eq!(
            judge("s", Some(&old), Some(&slot(0x700, "reserved")), &me, &sys),
            Start::Stream { from: Lsn(0x700) }
        );
        // But a slot that is gone is.
        assert_eq!(
            cause(judge("s", Some(&old), None, &me, &sys)),
            Some((Cause::SlotMissing, Lsn(0x300), None))
        );
    }

    #[test]
    fn another_source_or_a_rewound_history_is_a_gap() {
        let sys = system(1, 0x900, vec![]);
        let other = Source {
            system_id: "6999".into(),
            ..here(&sys)
        };
        let r = recorded(0x500, &other);
        assert!(matches!(
            cause(judge("s", Some(&r), Some(&slot(0x500, "reserved")), &here(&sys), &sys)),
            Some((Cause::OtherSource { .. }, _, None))
        ));
        // Restored to timeline 2 at 0/400: the record at 0/500 of timeline 1 is not history any more.
        let restored = system(2, 0x900, vec![(1, Lsn(0x400))]);
        let r = recorded(0x500, &here(&sys));
        assert_eq!(
            cause(judge(
                "s",
                Some(&r),
                Some(&slot(0x450, "reserved")),
                &here(&restored),
                &restored
            )),
            Some((Cause::SourceRewound { left_at: Lsn(0x400) }, Lsn(0x400), None))
        );
        // A timeline switch after the record is history ficus shares.
        let promoted = system(2, 0x900, vec![(1, Lsn(0x600))]);
        assert_eq!(
            judge(
                "s",
                Some(&r),
                Some(&slot(0x500, "reserved")),
                &here(&promoted),
                &promoted
            ),
            Start::Stream { from: Lsn(0x500) }
        );
        // The WAL ends before the record.
        let behind = system(1, 0x450, vec![]);
        assert!(matches!(
            cause(judge(
                "s",
                Some(&r),
                Some(&slot(0x400, "reserved")),
                &here(&behind),
                &behind
            )),
            Some((Cause::SourceRewound { .. }, _, _))
        ));
    }

    #[test]
    fn a_gap_says_what_happened_the_range_and_the_repair() {
        let gap = Gap {
            slot: "ficus".into(),
            cause: Cause::SlotMoved,
            after: Lsn(0x500),
            before: Some(Lsn(0x700)),
        };
        let text = gap.to_string();
        assert!(
            text.contains("slot ficus is at 0/700, but ficus confirmed only up to 0/500"),
            "{text}"
        );
        assert!(
            text.contains("(lost: changes committed after 0/500 and before 0/700)"),
            "{text}"
        );
        assert!(gap.repair().contains("ficus run --resync"), "{}", gap.repair());
    }
}
