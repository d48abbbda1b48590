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
use ficus_model::{Event, Lsn};
use serde::{Deserialize, Serialize};

use crate::RunError;
use crate::position::Gap;

/// The `type` of the event that tells consumers about a gap.
pub const EVENT_TYPE: &str = "ficus.gap";

/// A gap, as recorded by the resync that repairs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// The gap's id (its event's id derives from it).
    pub id: String,
    /// The slot.
    pub slot: String,
    /// What happened, in short (`slot-missing`, `slot-invalidated`, ...).
    pub cause: String,
    /// What happened, in words.
    pub message: String,
    /// Everything committed up to here was delivered.
    pub lost_after: Lsn,
    /// What was lost ends before here, when known when it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_before: Option<Lsn>,
    /// When it was found (RFC 3339).
    pub detected_at: String,
    /// Where the new slot starts: everything from here on is streamed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<Lsn>,
    /// The backfill that brings the current state, when a mapping maps snapshot rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
    /// Whether its `ficus.gap` event is delivered.
    pub delivered: bool,
}

impl GapRecord {
    /// A record of `gap`, found now.
    pub fn new(gap: &Gap, backfill: Option<String>) -> GapRecord {
        let now = chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap_or_default();
        GapRecord {
            id: format!("{:x}", now.timestamp_micros()),
            slot: gap.slot.clone(),
            cause: gap.cause.name().to_owned(),
            message: gap.to_string(),
            lost_after: gap.after,
            lost_before: gap.before,
            detected_at: ficus_model::value::rfc3339(now),
            resumed_at: None,
            backfill,
            delivered: false,
        }
    }

    fn dir(config_dir: &Path) -> PathBuf {
        config_dir.join(".ficus").join("gaps")
    }

    /// Every gap recorded next to a config, oldest first.
    pub fn all(config_dir: &Path) -> Result<Vec<GapRecord>, RunError> {
        let dir = GapRecord::dir(config_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(RunError::Config(format!("{}: {e}", dir.display()))),
        };
        let mut all = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| RunError::Config(format!("{}: {e}", dir.display())))?
                .path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
            let record = serde_json::from_str(&text).map_err(|e| {
                RunError::Config(format!(
                    "{}: {e}\nhint: it records a gap ficus repaired; restore it or remove it",
                    path.display()
                ))
            })?;
            all.push(record);
        }
        // Ids are hex timestamps: shorter is older.
        all.sort_by(|a: &GapRecord, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
        Ok(all)
    }

    /// The gaps of `slot` whose event is not delivered yet.
    pub fn undelivered(config_dir: &Path, slot: &str) -> Result<Vec<GapRecord>, RunError> {
        Ok(GapRecord::all(config_dir)?
            .into_iter()
            .filter(|g| g.slot == slot && !g.delivered)
            .collect())
    }

    /// Writes the record durably.
    pub fn save(&self, config_dir: &Path) -> Result<(), RunError> {
        let path = GapRecord::dir(config_dir).join(format!("{}.json", self.id));
        crate::state::write_durably(&path, &serde_json::to_vec_pretty(self).expect("a gap serializes"))
    }

    /// The `ficus.gap` event: its id derives from the gap's, so a repeat is the same event.
    pub fn event(&self, ctx: &EventContext) -> Event {
        let lost = |lsn: Option<Lsn>| lsn.map_or(serde_json::Value::Null, |l| l.to_string().into());
        Event {
            specversion: "1.0",
            id: ctx.event_id(&format!("gap/{}/{}", self.slot, self.id)),
            source: format!("/ficus/{}", ctx.source_name).into(),
            ty: Arc::from(EVENT_TYPE),
            aggregate: Arc::from("ficus"),
            subject: self.slot.clone(),
            time: self.detected_at.clone().into(),
            datacontenttype: "application/json",
            eventversion: 1,
            lsn: self.resumed_at.unwrap_or(self.lost_after).to_string().into(),
            txid: Arc::from("0"),
            backfill: None,
            data: serde_json::json!({
                "slot": self.slot,
                "cause": self.cause,
                "message": self.message,
                "lost_after": self.lost_after.to_string(),
                "lost_before": lost(self.resumed_at.or(self.lost_before)),
                "detected_at": self.detected_at,
                "backfill": self.backfill,
            }),
        }
    }
}
