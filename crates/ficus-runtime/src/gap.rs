//! Gaps ficus repaired: one file each under `.ficus/gaps/`, and the `ficus.gap` event that tells
//! consumers about it.
//!
//! A resync records its gap before it touches the slot, and delivers the `ficus.gap` event once
//! the new slot exists and before the backfill's snapshot events: a crash in between delivers it
//! at the next start. Consumers learn what range was lost, and that the snapshot events that
//! follow are the current state to reconcile their read models with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ficus_mapping::EventContext;
use ficus_model::{Data, Event, Lsn, Time};
use serde::{Deserialize, Serialize};

use crate::RunError;
use crate::position::Gap;

/// The `type` of the event that tells consumers about a gap.
pub const EVENT_TYPE: &str = "ficus.gap";

/// A gap, recorded when it is found. Until `--resync` repairs it, ficus refuses to stream from
/// the slot: a publication fixed afterwards, say, does not bring back what it did not send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// The gap's id (its event's id derives from it).
    pub id: String,
    /// What was lost, and why.
    #[serde(flatten)]
    pub gap: Gap,
    /// What happened, in words.
    pub message: String,
    /// When it was found (RFC 3339, to the microsecond).
    pub detected_at: chrono::DateTime<chrono::Utc>,
    /// When `--resync` repaired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_at: Option<String>,
    /// Where the new slot starts: everything from here on is streamed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<Lsn>,
    /// The backfill that brings the current state, when a mapping maps snapshot rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
    /// Whether its `ficus.gap` event is delivered.
    #[serde(default)]
    pub delivered: bool,
}

/// Now, in RFC 3339 to the microsecond.
fn now() -> String {
    let now = chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap_or_default();
    ficus_model::value::rfc3339(now)
}

impl GapRecord {
    /// Records a gap just found, unless one of its slot is recorded and not repaired yet (then
    /// that one stands); returns the record that stands.
    pub fn found(config_dir: &Path, gap: &Gap) -> Result<GapRecord, RunError> {
        if let Some(open) = GapRecord::unrepaired(config_dir, &gap.slot)?.into_iter().next() {
            return Ok(open);
        }
        let record = GapRecord {
            id: format!("{:x}", chrono::Utc::now().timestamp_micros()),
            gap: gap.clone(),
            message: gap.to_string(),
            detected_at: chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros())
                .unwrap_or_default(),
            repaired_at: None,
            resumed_at: None,
            backfill: None,
            delivered: false,
        };
        record.save(config_dir)?;
        Ok(record)
    }

    /// Marks it repaired by a resync whose backfill (if any) is `backfill`.
    pub fn repaired(&mut self, backfill: Option<String>, config_dir: &Path) -> Result<(), RunError> {
        self.repaired_at = Some(now());
        self.backfill = backfill;
        self.save(config_dir)
    }

    fn dir(config_dir: &Path) -> PathBuf {
        config_dir.join(".ficus").join("gaps")
    }

    /// Every gap recorded next to a config, oldest first.
    pub fn all(config_dir: &Path) -> Result<Vec<GapRecord>, RunError> {
        let mut all: Vec<GapRecord> = crate::state::load_all(
            &GapRecord::dir(config_dir),
            "it records a gap ficus found; restore it, or remove it to forget the gap",
        )?;
        crate::state::oldest_first(&mut all, |g| &g.id);
        Ok(all)
    }

    /// The gaps of `slot` no resync has repaired.
    pub fn unrepaired(config_dir: &Path, slot: &str) -> Result<Vec<GapRecord>, RunError> {
        Ok(GapRecord::all(config_dir)?
            .into_iter()
            .filter(|g| g.gap.slot == slot && g.repaired_at.is_none())
            .collect())
    }

    /// The gaps of `slot` repaired, whose event is not delivered yet.
    pub fn undelivered(config_dir: &Path, slot: &str) -> Result<Vec<GapRecord>, RunError> {
        Ok(GapRecord::all(config_dir)?
            .into_iter()
            .filter(|g| g.gap.slot == slot && g.repaired_at.is_some() && !g.delivered)
            .collect())
    }

    /// Writes the record durably.
    pub fn save(&self, config_dir: &Path) -> Result<(), RunError> {
        let path = GapRecord::dir(config_dir).join(format!("{}.json", self.id));
        crate::state::write_durably(&path, &serde_json::to_vec_pretty(self).expect("a gap serializes"))
    }

    /// The `ficus.gap` event: its id derives from the gap's, so a repeat is the same event.
    pub fn event(&self, ctx: &EventContext) -> Event {
        let slot = &self.gap.slot;
        let before = self.resumed_at.or(self.gap.before);
        Event {
            specversion: "1.0",
            id: ctx.event_id(&format!("gap/{slot}/{}", self.id)),
            source: ctx.source_uri(None).into(),
            ty: Arc::from(EVENT_TYPE),
            aggregate: Arc::from("ficus"),
            subject: slot.clone(),
            time: Time::from_micros(self.detected_at.timestamp_micros()),
            datacontenttype: ficus_model::event::JSON.into(),
            extensions: Vec::new(),
            body: None,
            eventversion: 1,
            lsn: self.resumed_at.unwrap_or(self.gap.after),
            txid: 0,
            backfill: None,
            unavailable: None,
            data: Data::from(serde_json::json!({
                "slot": slot,
                "cause": self.gap.cause.name(),
                "message": self.message,
                "lost_after": self.gap.after.to_string(),
                "lost_before": before.map(|l| l.to_string()),
                "detected_at": ficus_model::value::rfc3339(self.detected_at),
                "backfill": self.backfill,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Cause;

    #[test]
    fn a_gap_record_reads_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let gap = Gap {
            slot: "ficus".into(),
            cause: Cause::PublicationChanged {
                publication: "p".into(),
                what: "it does not publish update".into(),
                fix: Some("ALTER PUBLICATION p SET (publish = 'insert, update')".into()),
            },
            after: Lsn(0x10),
            before: None,
        };
        let found = GapRecord::found(dir.path(), &gap).unwrap();
        let text = std::fs::read_to_string(dir.path().join(".ficus/gaps").join(format!("{}.json", found.id))).unwrap();
        assert!(text.contains("\"cause\": \"publication-changed\""), "{text}");
        assert!(text.contains("\"lost_after\": \"0/10\""), "{text}");
        assert_eq!(GapRecord::unrepaired(dir.path(), "ficus").unwrap(), vec![found.clone()]);
        // Found again before a repair: the same record stands.
        let again = GapRecord::found(
            dir.path(),
            &Gap {
                after: Lsn(0x20),
                ..gap
            },
        )
        .unwrap();
        assert_eq!(again, found);
        let mut repaired = found;
        repaired.repaired(Some("b1".into()), dir.path()).unwrap();
        assert!(GapRecord::unrepaired(dir.path(), "ficus").unwrap().is_empty());
        assert_eq!(GapRecord::undelivered(dir.path(), "ficus").unwrap(), vec![repaired]);
    }
}
