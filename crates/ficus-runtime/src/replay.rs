//! `ficus replay`: stored events, in their order and with their ids, into one configured sink.

use std::time::Duration;

use ficus_model::{Event, Lsn};
use ficus_sinks::Outgoing;
use ficus_store::{EventStore, Filter, Mode, Store, StoreError};
use tokio::sync::watch;
use tracing::info;

use crate::RunError;
use crate::config::Config;
use crate::target::Target;

/// Events read from the store at a time.
const PAGE: i64 = 1_000;
/// How often `--follow` looks for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// What to replay, and where.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Which events.
    pub filter: Filter,
    /// The name of the sink to write to.
    pub to_sink: String,
    /// After the last stored event, wait for new ones (until shutdown).
    pub follow: bool,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events written.
    pub events: u64,
    /// The position of the first and of the last event written.
    pub positions: Option<(i64, i64)>,
    /// What the sink had to say at the end: events it gave up on (dead letters).
    pub warnings: Vec<String>,
}

/// Replays the config's store into the sink `options.to_sink` names.
pub async fn replay(
    config: &Config,
    options: &ReplayOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReplayReport, RunError> {
    let location = config.store_location().ok_or_else(|| {
        RunError::Config(
            "the config has no store sink: there is nothing to replay\nhint: add [[sink]] type = \"store\" (docs/store.md); ficus stores the events it delivers from then on"
                .into(),
        )
    })?;
    let mut target = Target::open(config, &options.to_sink).await?;
    let store = Store::open(&location, Mode::Existing).await?;
    let result = replay_from(&store, &mut target, options, &mut shutdown).await;
    store.close().await;
    let warning = target.close().await;
    result.map(|mut report| {
        report.warnings.extend(warning);
        report
    })
}

async fn replay_from(
    store: &Store,
    target: &mut Target,
    options: &ReplayOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<ReplayReport, RunError> {
    let filter = &options.filter;
    let end = store.end().await?;
    if let Some(from) = filter.from
        && from > end + 1
    {
        return Err(ficus_store::StoreError::new(
            format!(
                "position {from} is beyond the end of {} (its last position is {end})",
                store.describe()
            ),
            format!(
                "replay from a position up to {}; --follow waits for new events after the last one",
                end + 1
            ),
        )
        .into());
    }
    let mut after = filter.from.map_or(0, |f| f - 1);
    let mut report = ReplayReport::default();
    let progress = crate::progress::Positions::new("replay", after, Some(filter.to.map_or(end, |to| to.min(end))));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let page = store.read(filter, after, PAGE).await?;
        let mut outgoing = Vec::with_capacity(page.len());
        for stored in &page {
            let r = &stored.record;
            if target.accepts(&r.ty) {
                let event = Event::from_stored(&r.event, &r.aggregate, r.time_micros, Lsn(r.lsn)).map_err(|e| {
                    StoreError::new(
                        format!(
                            "{}: the event at position {} does not read back: {e}",
                            store.describe(),
                            stored.position
                        ),
                        "the store was damaged: restore it from a backup, or replay from a later position (--from)",
                    )
                })?;
                // The stored line, byte for byte.
                outgoing.push(Outgoing {
                    event,
                    line: r.event.clone().into(),
                });
                report.events += 1;
            }
            after = stored.position;
            let first = report.positions.map_or(after, |(first, _)| first);
            report.positions = Some((first, after));
        }
        target.deliver(&outgoing, shutdown).await?;
        progress.at(after);
        let past_the_end = filter.to.is_some_and(|to| after >= to);
        if page.len() as i64 == PAGE && !past_the_end {
            continue;
        }
        if !options.follow || past_the_end {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = shutdown.changed() => {}
        }
    }
    progress.finish();
    info!(events = report.events, "replayed");
    Ok(report)
}

/// Parses a time given on the command line: RFC 3339 (`2026-11-01T12:00:00Z`), or a UTC date
/// (`2026-11-01`) or date and time (`2026-11-01 12:00:00`); microseconds since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    use chrono::{NaiveDate, NaiveDateTime};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_micros());
    }
    Err(format!(
        "invalid time {s:?}: write 2026-11-01, 2026-11-01 12:00:00 (UTC) or 2026-11-01T12:00:00+01:00"
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_in_utc_unless_an_offset_is_given() {
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(parse_time("1970-01-01 00:00:01.5"), Ok(1_500_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Ok(0));
        assert!(parse_time("yesterday").unwrap_err().contains("invalid time"));
    }
}
