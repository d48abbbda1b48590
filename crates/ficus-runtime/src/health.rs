//! What a running ficus says of itself on `/readyz`: its role (streaming, or a standby waiting
//! for the lease), and whether it makes progress. The run updates a [`Health`]; the verdict is
//! [`readiness`], a pure function of what was last seen, tested as one.
//!
//! Ready means: this ficus holds the lease and streams, its position moves (or the server has
//! nothing more to send), no sink is failing, and the slot holds less WAL than
//! `max_retained_wal`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ficus_model::Lsn;
use serde::{Deserialize, Serialize};

/// What a ficus process is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connecting, checking, preparing the slot.
    #[default]
    Starting,
    /// Another ficus holds the lease on the slot: this one waits to take over.
    Standby,
    /// It holds the lease and streams.
    Streaming,
    /// It is stopping (a signal, `--until-caught-up` done, or an error).
    Stopping,
}

/// What was last seen of the run.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The role.
    pub role: Role,
    /// For a standby: who holds the lease.
    pub lease_holder: Option<String>,
    /// What the slot was last acknowledged up to.
    pub acknowledged: Lsn,
    /// The server's position, as the stream last said.
    pub server: Lsn,
    /// When the acknowledged position last moved, or ficus was last found caught up.
    pub moved_at: Instant,
    /// Sinks failing (retrying after an error): name, since when, the error.
    pub failing: Vec<(String, Instant, String)>,
    /// WAL the slot holds, in bytes, when last read.
    pub retained_wal: Option<u64>,
    /// The last error ficus met (reconnected from, or retried).
    pub last_error: Option<String>,
    /// Since the commit of the oldest transaction read and not yet durable everywhere.
    pub lag_seconds: f64,
    /// Per sink, the last event it made durable.
    pub last_events: BTreeMap<String, LastEvent>,
    /// Whether this process streamed at all (a standby that never took over did not).
    pub streamed: bool,
}

/// An event a sink made durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// Its id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its subject (the aggregate's key).
    pub subject: String,
    /// Its `lsn`: its change's commit (for a backfill row, the chunk's watermark).
    pub lsn: Lsn,
}

impl Seen {
    fn new(now: Instant) -> Seen {
        Seen {
            role: Role::Starting,
            lease_holder: None,
            acknowledged: Lsn(0),
            server: Lsn(0),
            moved_at: now,
            failing: vec![],
            retained_wal: None,
            last_error: None,
            lag_seconds: 0.0,
            last_events: BTreeMap::new(),
            streamed: false,
        }
    }
}

/// The limits readiness is judged by.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// No progress this long, with WAL to send: stalled.
    pub stall_after: Duration,
    /// More retained WAL than this (bytes; 0: no limit).
    pub max_retained_wal: u64,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// The role.
    pub role: Role,
    /// Why it is not ready (empty when it is).
    pub reasons: Vec<String>,
    /// The last error ficus met (reconnected from, or stopped on), ready or not.
    pub last_error: Option<String>,
}

/// Judges readiness from what was seen, at `now`.
pub fn readiness(seen: &Seen, limits: &Limits, now: Instant) -> Readiness {
    let mut reasons = vec![];
    match seen.role {
        Role::Streaming => {}
        Role::Standby => reasons.push(match &seen.lease_holder {
            Some(holder) => format!("standby: the lease is held by {holder}"),
            None => "standby: another ficus holds the lease".to_owned(),
        }),
        Role::Starting => reasons.push("starting".to_owned()),
        Role::Stopping => reasons.push("stopping".to_owned()),
    }
    if seen.role == Role::Streaming {
        let still = now.saturating_duration_since(seen.moved_at);
        if seen.server > seen.acknowledged && still >= limits.stall_after {
            reasons.push(format!(
                "stalled: the position has not moved for {}s while the server has {} bytes more to send",
                still.as_secs(),
                seen.server.0 - seen.acknowledged.0
            ));
        }
    }
    for (sink, since, error) in &seen.failing {
        reasons.push(format!(
            "sink {sink} failing for {}s: {error}",
            now.saturating_duration_since(*since).as_secs()
        ));
    }
    if let Some(retained) = seen.retained_wal
        && limits.max_retained_wal > 0
        && retained > limits.max_retained_wal
    {
        reasons.push(format!(
            "the slot holds {retained} bytes of WAL, over max_retained_wal ({} bytes)",
            limits.max_retained_wal
        ));
    }
    Readiness {
        ready: reasons.is_empty(),
        role: seen.role,
        reasons,
        last_error: seen.last_error.clone(),
    }
}

/// The run's health, shared with the endpoint that reports it.
pub struct Health {
    seen: Mutex<Seen>,
    limits: Mutex<Limits>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            seen: Mutex::new(Seen::new(Instant::now())),
            limits: Mutex::new(Limits {
                stall_after: Duration::from_secs(300),
                max_retained_wal: 0,
            }),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("seen", &self.seen()).finish()
    }
}

impl Health {
    /// Sets the limits (from the config).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Changes what was seen.
    pub fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// What was seen.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The verdict now.
    pub fn readiness(&self) -> Readiness {
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        readiness(&self.seen(), &limits, Instant::now())
    }

    /// The role changes.
    pub fn role(&self, role: Role) {
        self.update(|s| {
            s.role = role;
            if role == Role::Streaming {
                s.streamed = true;
                s.lease_holder = None;
                s.moved_at = Instant::now();
            }
        });
        crate::telemetry::role(role);
    }

    /// The slot was acknowledged up to `lsn`, the server being at `server` (as last said).
    pub fn acknowledged(&self, lsn: Lsn, server: Lsn) {
        self.update(|s| {
            if lsn > s.acknowledged || lsn >= server {
                s.moved_at = Instant::now();
            }
            s.acknowledged = s.acknowledged.max(lsn);
            s.server = s.server.max(server);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            stall_after: Duration::from_secs(60),
            max_retained_wal: 1000,
        }
    }

    fn streaming(now: Instant) -> Seen {
        Seen {
            role: Role::Streaming,
            ..Seen::new(now)
        }
    }

    #[test]
    fn streaming_and_moving_is_ready() {
        let now = Instant::now();
        let seen = Seen {
            acknowledged: Lsn(100),
            server: Lsn(200),
            ..streaming(now)
        };
        let later = now + Duration::from_secs(59);
        assert_eq!(
            readiness(&seen, &limits(), later),
            Readiness {
                ready: true,
                role: Role::Streaming,
                reasons: vec![],
                last_error: None,
            }
        );
    }

    #[test]
    fn no_progress_with_wal_to_send_is_stalled_but_caught_up_is_not() {
        let now = Instant::now();
        let behind = Seen {
            acknowledged: Lsn(100),
            server: Lsn(200),
            ..streaming(now)
        };
        let later = now + Duration::from_secs(61);
        let verdict = readiness(&behind, &limits(), later);
        assert!(!verdict.ready);
        assert_eq!(
            verdict.reasons,
            ["stalled: the position has not moved for 61s while the server has 100 bytes more to send"]
        );
        let caught_up = Seen {
            acknowledged: Lsn(200),
            server: Lsn(200),
            ..streaming(now)
        };
        assert!(readiness(&caught_up, &limits(), later).ready);
    }

    #[test]
    fn standby_starting_failing_sinks_and_retained_wal_are_not_ready() {
        let now = Instant::now();
        let standby = Seen {
            role: Role::Standby,
            lease_holder: Some("ficus pid 7 on the server".into()),
            ..Seen::new(now)
        };
        assert_eq!(
            readiness(&standby, &limits(), now).reasons,
            ["standby: the lease is held by ficus pid 7 on the server"]
        );
        assert_eq!(readiness(&Seen::new(now), &limits(), now).reasons, ["starting"]);
        let failing = Seen {
            failing: vec![("nats".into(), now, "connection refused".into())],
            retained_wal: Some(1001),
            ..streaming(now)
        };
        assert_eq!(
            readiness(&failing, &limits(), now + Duration::from_secs(3)).reasons,
            [
                "sink nats failing for 3s: connection refused",
                "the slot holds 1001 bytes of WAL, over max_retained_wal (1000 bytes)"
            ]
        );
        let unlimited = Limits {
            max_retained_wal: 0,
            ..limits()
        };
        let held = Seen {
            retained_wal: Some(u64::MAX),
            ..streaming(now)
        };
        assert!(readiness(&held, &unlimited, now).ready);
    }
}
