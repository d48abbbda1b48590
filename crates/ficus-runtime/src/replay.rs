//! `ficus replay`: stored events, in their order and with their ids, into one configured sink.

use std::time::Duration;

use std::sync::Arc;

use ficus_model::{Event, Lsn, Time};
use ficus_sinks::Outgoing;
use ficus_store::{EventStore, Filter, LinePage, Mode, PagedLine, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::RunError;
use crate::config::Config;
use crate::target::Target;

/// Events read from the store at a time.
const PAGE: i64 = 1_000;
/// Pages read ahead of the one the sink writes.
const READ_AHEAD: usize = 2;
/// How often `--follow` looks for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(25);

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
    let start = filter.from.map_or(0, |f| f - 1);
    let mut report = ReplayReport::default();
    let progress = crate::progress::Positions::new("replay", start, Some(filter.to.map_or(end, |to| to.min(end))));
    // The next pages are read, and read back into events, on a task of their own while the sink
    // writes this one.
    let (pages, mut next) = mpsc::channel(READ_AHEAD);
    let mut reader = AbortOnDrop(tokio::spawn(read_pages(
        store.clone(),
        filter.clone(),
        target.routes().clone(),
        target.reads_attributes(),
        start,
        options.follow,
        pages,
    )));
    while !*shutdown.borrow() {
        let page = tokio::select! {
            page = next.recv() => page,
            _ = shutdown.changed() => break,
        };
        let Some(page) = page else {
            // The reader ended, its pages all sent: past the end, or it failed without sending
            // its error (a panic), which is not taken for the end of the store.
            if let Err(e) = (&mut reader.0).await
                && e.is_panic()
            {
                return Err(RunError::bug(format!("the replay's reader failed: {e}")));
            }
            break;
        };
        let page = page?;
        target.deliver(&page.events, shutdown).await?;
        report.events += page.events.len() as u64;
        if let Some((first, last)) = page.positions {
            let first = report.positions.map_or(first, |(first, _)| first);
            report.positions = Some((first, last));
            progress.at(last);
        }
    }
    progress.finish();
    info!(events = report.events, "replayed");
    Ok(report)
}

/// The reader's task, stopped however the replay ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A page read ahead: the events the sink takes, and the positions of the page's first and last
/// stored events (of any type).
struct Page {
    events: Vec<Outgoing>,
    positions: Option<(i64, i64)>,
}

/// Reads pages after `after`, in order, until past the filter's end or (unless `follow`) the
/// store's; stops at the first error, which it sends.
async fn read_pages(
    store: Store,
    filter: Filter,
    routes: ficus_sinks::Routes,
    attributes: bool,
    mut after: i64,
    follow: bool,
    pages: mpsc::Sender<Result<Page, RunError>>,
) {
    let mut shared = Shared::default();
    loop {
        let read = store.read_page(&filter, after, PAGE).await;
        let page = read.map_err(RunError::from).and_then(|read| {
            let lines = read.lines();
            // A page may hold fewer events than asked for and not be the last (the store reads
            // fewer at a time when a page would not fit in one value): the end is an empty page.
            let full = !lines.is_empty();
            let positions = lines.first().zip(lines.last()).map(|(f, l)| (f.position, l.position));
            let mut events = Vec::with_capacity(lines.len());
            for line in lines {
                if routes.accepts(read.ty(line)) {
                    events.push(read_back(&store, &read, line, attributes, &mut shared)?);
                }
            }
            Ok((full, Page { events, positions }))
        });
        let (full, page) = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = pages.send(Err(e)).await;
                return;
            }
        };
        if let Some((_, last)) = page.positions {
            after = last;
        }
        let past_the_end = filter.to.is_some_and(|to| after >= to);
        if (page.positions.is_some() || !follow) && pages.send(Ok(page)).await.is_err() {
            return;
        }
        if full && !past_the_end {
            continue;
        }
        if !follow || past_the_end {
            return;
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// What consecutive stored events share: the type and the aggregate, and the commit time of a
/// transaction.
#[derive(Default)]
struct Shared {
    ty: Option<Arc<str>>,
    aggregate: Option<Arc<str>>,
    time: Option<Time>,
}

/// A stored event as it goes out: the stored line, byte for byte (a slice of the page), with the
/// event's attributes read back from it (its data stays in the line, as on every outgoing event)
/// — or, for a sink that reads no attributes (`attributes` false: stdout, jsonl), with only those
/// the store keeps in columns, and the line not read: reading every line back was a fifth of a
/// replay's time.
fn read_back(
    store: &Store,
    page: &LinePage,
    line: &PagedLine,
    attributes: bool,
    shared: &mut Shared,
) -> Result<Outgoing, RunError> {
    let aggregate = match &shared.aggregate {
        Some(a) if **a == *page.aggregate(line) => a.clone(),
        _ => shared.aggregate.insert(Arc::from(page.aggregate(line))).clone(),
    };
    let time = match &shared.time {
        Some(t) if t.micros() == line.time_micros => t.clone(),
        _ => shared.time.insert(Time::from_micros(line.time_micros)).clone(),
    };
    if !attributes {
        let ty = match &shared.ty {
            Some(t) if **t == *page.ty(line) => t.clone(),
            _ => shared.ty.insert(Arc::from(page.ty(line))).clone(),
        };
        return Ok(Outgoing {
            event: Event::routing_only(ty, aggregate, time, Lsn(line.lsn)),
            line: page.event_bytes(line),
        });
    }
    let event = Event::attributes_from_stored(page.event(line), aggregate, time, Lsn(line.lsn)).map_err(|e| {
        StoreError::new(
            format!(
                "{}: the event at position {} does not read back: {e}",
                store.describe(),
                line.position
            ),
            "the store was damaged: restore it from a backup, or replay from a later position (--from)",
        )
    })?;
    Ok(Outgoing {
        event,
        line: page.event_bytes(line),
    })
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
