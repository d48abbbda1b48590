//! The evolution guard: `mappings/ficus.lock` holds the released shape of every event version's
//! data, and a change to a mapping that would break the event's consumers without a `version`
//! bump is refused, naming the event, the field and the change.
//!
//! Compatibility is per event (`compatibility` in the lock, default `backward`), as a schema
//! registry means it:
//! - `backward`: a consumer of the released schema reads the new events — no required field
//!   removed or made optional, no type changed, no field made nullable;
//! - `forward`: a consumer of the new schema reads the released events — no required field added,
//!   no type changed, no field made non-nullable;
//! - `full`: both; `none`: anything goes;
//! - `*_transitive`: against every released schema of the version, not only the last.
//!
//! A new `version` of an event is a new contract: it is checked against nothing (its consumers
//! move to it on purpose) and is released by locking again. A version the lock has and no mapping
//! makes any more is reported: its consumers stop getting events.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use crate::{EventVersion, type_schema};

/// The lock file's name, next to the mappings.
pub const LOCK_FILE: &str = "ficus.lock";

/// A field as released.
#[derive(Clone, Debug, PartialEq)]
pub struct LockedField {
    /// Its type's schema, without null.
    pub ty: Json,
    /// Whether it can be null.
    pub nullable: bool,
    /// Whether every event has it.
    pub required: bool,
}

/// The shape of an event version's data as released: its fields by name.
pub type Released = BTreeMap<String, LockedField>;

/// How a new shape must relate to the released ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// Consumers of the released schema read the new events.
    Backward,
    /// Consumers of the new schema read the released events.
    Forward,
    /// Both.
    Full,
    /// Anything goes.
    None,
}

/// An event's compatibility setting: the mode, and whether it holds against every released
/// schema of a version or the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// The mode.
    pub compatibility: Compatibility,
    /// Against every released schema.
    pub transitive: bool,
}

impl Default for Mode {
    fn default() -> Mode {
        Mode {
            compatibility: Compatibility::Backward,
            transitive: false,
        }
    }
}

impl Mode {
    /// `backward`, `forward_transitive`, ...
    pub fn parse(s: &str) -> Option<Mode> {
        let (name, transitive) = match s.strip_suffix("_transitive") {
            Some(n) => (n, true),
            None => (s, false),
        };
        let compatibility = match name {
            "backward" => Compatibility::Backward,
            "forward" => Compatibility::Forward,
            "full" => Compatibility::Full,
            "none" => Compatibility::None,
            _ => return None,
        };
        Some(Mode {
            compatibility,
            transitive,
        })
    }

    /// Its name in the lock.
    pub fn name(self) -> String {
        let base = match self.compatibility {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::None => "none",
        };
        if self.transitive {
            format!("{base}_transitive")
        } else {
            base.to_owned()
        }
    }
}

/// The lock: per event, its compatibility mode and every released shape of each version,
/// oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lock {
    /// By event name.
    pub events: BTreeMap<String, LockedEvent>,
}

/// One event in the lock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockedEvent {
    /// Its compatibility mode.
    pub mode: Mode,
    /// Its versions' released shapes, oldest first.
    pub versions: BTreeMap<u32, Vec<Released>>,
}

/// The shape an event version has now, as the lock would record it; `None` when its fields are
/// not all known (a whole row of a table no fixture declares), which cannot be locked.
pub fn released(event: &EventVersion) -> Option<Released> {
    let [source] = event.sources.as_slice() else {
        // Several mappings make it: a field is what all of them say, required if all have it.
        let shapes: Vec<Released> = event
            .sources
            .iter()
            .map(|s| {
                released(&EventVersion {
                    name: event.name.clone(),
                    version: event.version,
                    sources: vec![s.clone()],
                })
            })
            .collect::<Option<_>>()?;
        let mut merged = shapes[0].clone();
        for shape in &shapes[1..] {
            for (name, field) in merged.iter_mut() {
                match shape.get(name) {
                    Some(f) if f.ty == field.ty => {
                        field.nullable |= f.nullable;
                        field.required &= f.required;
                    }
                    Some(_) => field.ty = json!({}),
                    None => field.required = false,
                }
            }
            for (name, f) in shape {
                merged.entry(name.clone()).or_insert(LockedField {
                    required: false,
                    ..f.clone()
                });
            }
        }
        return Some(merged);
    };
    if source.shape.open {
        return None;
    }
    Some(
        source
            .shape
            .fields
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    LockedField {
                        ty: type_schema(&f.ty),
                        nullable: f.nullable,
                        required: f.required,
                    },
                )
            })
            .collect(),
    )
}

/// A change that breaks an event's consumers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaking {
    /// The event.
    pub event: String,
    /// Its version.
    pub version: u32,
    /// The field.
    pub field: String,
    /// What changed, in words.
    pub change: String,
    /// The mode that refuses it.
    pub mode: String,
}

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{}: data.{}: {} (breaks its consumers under {} compatibility)",
            self.event, self.version, self.field, self.change, self.mode
        )
    }
}

/// What the mappings do to the lock's events.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Changes that break consumers: `ficus check` fails on them.
    pub breaking: Vec<Breaking>,
    /// Versions the lock has that no mapping makes any more.
    pub retired: Vec<(String, u32)>,
    /// Event versions the lock does not have yet (new events and new versions).
    pub unlocked: Vec<(String, u32)>,
    /// Event versions whose shape cannot be known (a whole row of an undeclared table).
    pub unknown: Vec<(String, u32)>,
}

impl Lock {
    /// Compares the mappings' events with the lock.
    pub fn check(&self, events: &[EventVersion]) -> Verdict {
        let mut verdict = Verdict::default();
        for event in events {
            let Some(locked) = self
                .events
                .get(&event.name)
                .and_then(|e| e.versions.get(&event.version).map(|v| (e, v)))
            else {
                verdict.unlocked.push((event.name.clone(), event.version));
                continue;
            };
            let (locked_event, releases) = locked;
            let Some(now) = released(event) else {
                verdict.unknown.push((event.name.clone(), event.version));
                continue;
            };
            let mode = locked_event.mode;
            let against: Vec<&Released> = if mode.transitive {
                releases.iter().collect()
            } else {
                releases.last().into_iter().collect()
            };
            for before in against {
                for (field, change) in compare(before, &now, mode.compatibility) {
                    let b = Breaking {
                        event: event.name.clone(),
                        version: event.version,
                        field,
                        change,
                        mode: mode.name(),
                    };
                    if !verdict.breaking.contains(&b) {
                        verdict.breaking.push(b);
                    }
                }
            }
        }
        for (name, locked) in &self.events {
            for version in locked.versions.keys() {
                if !events.iter().any(|e| &e.name == name && e.version == *version) {
                    verdict.retired.push((name.clone(), *version));
                }
            }
        }
        verdict
    }

    /// The lock with the events' current shapes released: a shape that differs from a version's
    /// last release is appended; new events and versions are added (mode `backward`); versions
    /// no mapping makes any more are retired (left out).
    pub fn release(&self, events: &[EventVersion]) -> Lock {
        let mut lock = self.clone();
        for (name, locked) in lock.events.iter_mut() {
            locked
                .versions
                .retain(|v, _| events.iter().any(|e| &e.name == name && e.version == *v));
        }
        // An event whose every locked version retired keeps its mode when a mapping makes it.
        lock.events
            .retain(|name, e| !e.versions.is_empty() || events.iter().any(|ev| &ev.name == name));
        for event in events {
            let Some(now) = released(event) else { continue };
            let entry = lock.events.entry(event.name.clone()).or_default();
            let releases = entry.versions.entry(event.version).or_default();
            if releases.last() != Some(&now) {
                releases.push(now);
            }
        }
        lock
    }

    /// The lock file's text (JSON, stable order).
    pub fn to_text(&self) -> String {
        let events: serde_json::Map<String, Json> = self
            .events
            .iter()
            .map(|(name, e)| {
                let versions: serde_json::Map<String, Json> = e
                    .versions
                    .iter()
                    .map(|(v, releases)| {
                        let releases: Vec<Json> = releases
                            .iter()
                            .map(|fields| {
                                Json::Object(
                                    fields
                                        .iter()
                                        .map(|(f, l)| {
                                            (
                                                f.clone(),
                                                json!({ "type": l.ty, "nullable": l.nullable, "required": l.required }),
                                            )
                                        })
                                        .collect(),
                                )
                            })
                            .collect();
                        (v.to_string(), Json::Array(releases))
                    })
                    .collect();
                (
                    name.clone(),
                    json!({ "compatibility": e.mode.name(), "versions": versions }),
                )
            })
            .collect();
        let doc = json!({
            "comment": "ficus's evolution guard: the released data of every event version. Written by `ficus catalog --lock`; `ficus check` compares the mappings with it (docs/catalog.md#the-evolution-guard). Commit it.",
            "events": events,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }

    /// Reads a lock file's text.
    pub fn parse(text: &str) -> Result<Lock, String> {
        let doc: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut lock = Lock::default();
        let Some(events) = doc.get("events").and_then(Json::as_object) else {
            return Err("no \"events\" object".into());
        };
        for (name, e) in events {
            let mode_name = e.get("compatibility").and_then(Json::as_str).unwrap_or("backward");
            let mode = Mode::parse(mode_name).ok_or_else(|| {
                format!("{name}: compatibility {mode_name:?} is none of backward, forward, full, none (or their _transitive)")
            })?;
            let mut versions = BTreeMap::new();
            for (v, releases) in e.get("versions").and_then(Json::as_object).into_iter().flatten() {
                let version: u32 = v
                    .parse()
                    .map_err(|_| format!("{name}: version {v:?} is not a number"))?;
                let mut list = Vec::new();
                for release in releases.as_array().into_iter().flatten() {
                    let mut fields = Released::new();
                    for (f, l) in release.as_object().into_iter().flatten() {
                        // A field missing a key would weaken the guard without a word: refused.
                        let flag = |key: &str| {
                            l.get(key)
                                .and_then(Json::as_bool)
                                .ok_or_else(|| format!("{name} v{v}: field {f:?} has no {key} true/false"))
                        };
                        let ty = l
                            .get("type")
                            .cloned()
                            .ok_or_else(|| format!("{name} v{v}: field {f:?} has no type"))?;
                        fields.insert(
                            f.clone(),
                            LockedField {
                                ty,
                                nullable: flag("nullable")?,
                                required: flag("required")?,
                            },
                        );
                    }
                    list.push(fields);
                }
                versions.insert(version, list);
            }
            lock.events.insert(name.clone(), LockedEvent { mode, versions });
        }
        Ok(lock)
    }
}

/// What breaks between a released shape and the new one under a mode: (field, change).
pub fn compare(before: &Released, now: &Released, compatibility: Compatibility) -> Vec<(String, String)> {
    let backward = matches!(compatibility, Compatibility::Backward | Compatibility::Full);
    let forward = matches!(compatibility, Compatibility::Forward | Compatibility::Full);
    let mut out = Vec::new();
    for (name, old) in before {
        match now.get(name) {
            None if backward && old.required => out.push((name.clone(), "a required field was removed".to_owned())),
            None if forward => out.push((
                name.clone(),
                "a field was removed (new consumers cannot tell it from absent)".to_owned(),
            )),
            None => {}
            Some(new) => {
                if new.ty != old.ty && (backward || forward) {
                    out.push((
                        name.clone(),
                        format!("its type changed from {} to {}", type_name(&old.ty), type_name(&new.ty)),
                    ));
                }
                if backward && !old.nullable && new.nullable {
                    out.push((name.clone(), "it became nullable".to_owned()));
                }
                if forward && old.nullable && !new.nullable {
                    out.push((
                        name.clone(),
                        "it became non-nullable (released events may carry null)".to_owned(),
                    ));
                }
                if backward && old.required && !new.required {
                    out.push((name.clone(), "it became optional (events may leave it out)".to_owned()));
                }
                if forward && !old.required && new.required {
                    out.push((
                        name.clone(),
                        "it became required (released events may lack it)".to_owned(),
                    ));
                }
            }
        }
    }
    for (name, new) in now {
        if !before.contains_key(name) && forward && new.required {
            out.push((
                name.clone(),
                "a required field was added (released events lack it)".to_owned(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;

/// A type's schema in a few words: `integer`, `number`, `date-time string`, `array of string`.
pub fn type_name(ty: &Json) -> String {
    if let Some(first) = ty.get("anyOf").and_then(Json::as_array).and_then(|a| a.first()) {
        return type_name(first);
    }
    match (
        ty.get("type").and_then(Json::as_str),
        ty.get("format").and_then(Json::as_str),
    ) {
        (Some("array"), _) => format!("array of {}", ty.get("items").map_or("any JSON".to_owned(), type_name)),
        (Some(t), Some(f)) => format!("{f} {t}"),
        (Some(t), None) if ty.get("contentEncoding").is_some() => format!("base64 {t}"),
        (Some(t), None) => t.to_owned(),
        (None, _) => "any JSON".to_owned(),
    }
}
