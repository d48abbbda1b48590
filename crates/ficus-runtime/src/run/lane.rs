//! A lane: one sink, driven by a task of its own, so a slow sink holds back the slot and only
//! itself — the others go on taking events until its bound of events in flight is reached.
//!
//! ```text
//! delivery ──Events / Mark(commit) / Flush──▶ lane task ──write, flush──▶ sink
//!    ▲                                            │
//!    └──── status: durable up to commit X ◀───────┘   (a transient error: back off, write again)
//! ```
//!
//! The lane knows which commit the events it wrote complete (a `Mark` follows the last event of a
//! commit), so an `Ok` from the sink's flush makes the lane durable up to the last mark it had
//! received. Permits bound the events in flight: the delivery takes one per event before it sends
//! them, the lane gives them back once they are durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_model::Lsn;
use ficus_sinks::{Outgoing, Routes, Sink, SinkError};
use ficus_store::{ArchivedChange, StoreSink};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::health::{Health, LastEvent};
use crate::telemetry;
use metrics::{Counter, Histogram, counter, histogram};

/// A lane flushes as soon as it has received the events of a commit and nothing else waits
/// (group commit); otherwise at least this often while it has events that are not durable.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Items waiting for a lane (its events are bounded by permits; this bounds the marks).
const QUEUE: usize = 1024;

/// What the delivery sends a lane.
pub(crate) enum Item {
    /// Events (the lane takes those its routes accept), with their permits.
    Events(Arc<Vec<Outgoing>>, OwnedSemaphorePermit),
    /// Row changes to archive (the store's lane only).
    Changes(Vec<ArchivedChange>),
    /// Everything sent before completes the commits up to here.
    Mark(Lsn),
    /// Make everything sent so far durable, then answer.
    Flush(oneshot::Sender<()>),
}

/// How a lane is doing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// Everything up to this commit is durable in the sink (for the store: recorded in its
    /// checkpoint).
    pub durable: Lsn,
    /// The definite error it stopped on.
    pub failed: Option<Arc<SinkError>>,
    /// Since when it has been failing transiently, and why.
    pub failing: Option<(Instant, String)>,
}

/// The delivery's handle on a lane.
pub(crate) struct Lane {
    pub name: String,
    pub routes: Routes,
    pub tx: mpsc::Sender<Item>,
    pub status: watch::Receiver<Status>,
    pub permits: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub task: JoinHandle<Target>,
}

/// The sink a lane drives.
pub(crate) enum Target {
    Sink(Box<dyn Sink>),
    /// The store: it records a checkpoint no further than `gate`, what every other lane holds
    /// durable, so that streaming from it after a crash loses nothing anywhere.
    Store {
        sink: StoreSink,
        gate: Vec<watch::Receiver<Status>>,
        /// What is known of the source, recorded with the checkpoint.
        source: String,
        recorded: Lsn,
    },
}

impl Target {
    async fn close(&mut self) {
        match self {
            Target::Sink(s) => s.close().await,
            Target::Store { sink, .. } => sink.close().await,
        }
    }

    /// What the sink must say when ficus stops.
    pub fn summary(&self) -> Option<String> {
        match self {
            Target::Sink(s) => s.summary(),
            Target::Store { .. } => None,
        }
    }
}

/// Who to wake when a lane's status changes: the session, and the store's lane.
#[derive(Clone, Default)]
pub(crate) struct Wakers(pub Vec<Arc<Notify>>);

impl Wakers {
    fn wake(&self) {
        for n in &self.0 {
            n.notify_one();
        }
    }
}

/// Settings of a lane.
pub(crate) struct LaneSettings {
    pub name: String,
    pub routes: Routes,
    pub max_in_flight: usize,
    /// A sink failing transiently this long is given up on (`None`: retried for ever).
    pub give_up_after: Option<Duration>,
    /// Durable up to here at the start.
    pub from: Lsn,
}

impl Lane {
    /// Starts a lane for `target`; `woken` is told when it wants to re-evaluate (the store's
    /// lane: when a lane it is gated by moves).
    pub fn start(
        settings: LaneSettings,
        target: Target,
        wakers: Wakers,
        woken: Option<Arc<Notify>>,
        health: Arc<Health>,
    ) -> Lane {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (status_tx, status) = watch::channel(Status {
            durable: settings.from,
            ..Status::default()
        });
        let permits = Arc::new(Semaphore::new(settings.max_in_flight));
        let driver = Driver {
            name: settings.name.clone(),
            routes: settings.routes.clone(),
            target,
            rx,
            status: status_tx,
            wakers,
            woken: woken.unwrap_or_default(),
            unflushed: Vec::new(),
            unflushed_events: 0,
            unflushed_changes: 0,
            marked: settings.from,
            last_flush: Instant::now(),
            flush_at: (settings.max_in_flight / 2).max(1),
            give_up_after: settings.give_up_after,
            metrics: LaneMetrics::new(&settings.name),
            health,
        };
        Lane {
            name: settings.name,
            routes: settings.routes,
            tx,
            status,
            permits,
            max_in_flight: settings.max_in_flight,
            task: tokio::spawn(driver.run()),
        }
    }
}

struct Driver {
    name: String,
    routes: Routes,
    target: Target,
    rx: mpsc::Receiver<Item>,
    status: watch::Sender<Status>,
    wakers: Wakers,
    woken: Arc<Notify>,
    /// Events written and not yet durable, kept to be written again after a transient error.
    unflushed: Vec<(Arc<Vec<Outgoing>>, OwnedSemaphorePermit)>,
    unflushed_events: usize,
    unflushed_changes: usize,
    /// The last mark received: what a flush makes durable.
    marked: Lsn,
    last_flush: Instant,
    /// Flush at once past this many unflushed events.
    flush_at: usize,
    give_up_after: Option<Duration>,
    metrics: LaneMetrics,
    /// Told when the sink fails and when it takes events again (`/readyz`).
    health: Arc<Health>,
}

/// A lane's metrics: events and bytes made durable, write and flush times.
struct LaneMetrics {
    sink: String,
    events: HashMap<Arc<str>, Counter>,
    bytes: Counter,
    write: Histogram,
    flush: Histogram,
}

impl LaneMetrics {
    fn new(sink: &str) -> LaneMetrics {
        LaneMetrics {
            sink: sink.to_owned(),
            events: HashMap::new(),
            bytes: counter!(telemetry::SINK_BYTES, "sink" => sink.to_owned()),
            write: histogram!(telemetry::SINK_WRITE, "sink" => sink.to_owned()),
            flush: histogram!(telemetry::SINK_FLUSH, "sink" => sink.to_owned()),
        }
    }

    /// Counts the events of `batches` the routes take: they are durable now. Returns the last.
    fn durable<'a>(
        &mut self,
        batches: &'a [(Arc<Vec<Outgoing>>, OwnedSemaphorePermit)],
        routes: &Routes,
    ) -> Option<&'a Outgoing> {
        let mut bytes = 0;
        let mut last = None;
        for (batch, _) in batches {
            for o in routed(batch, routes) {
                last = Some(o);
                bytes += o.line.len() as u64;
                match self.events.get(&*o.event.ty) {
                    Some(c) => c.increment(1),
                    None => {
                        let c =
                            counter!(telemetry::EVENTS, "sink" => self.sink.clone(), "type" => o.event.ty.to_string());
                        c.increment(1);
                        self.events.insert(o.event.ty.clone(), c);
                    }
                }
            }
        }
        self.bytes.increment(bytes);
        last
    }
}

impl Driver {
    async fn run(mut self) -> Target {
        if let Err(e) = self.drive().await {
            let e = e.named(&self.name);
            warn!(sink = %self.name, error = %e, "the sink failed; events not durable in it are not acknowledged");
            self.status.send_modify(|s| {
                s.failed = Some(Arc::new(e));
                s.failing = None;
            });
            self.wakers.wake();
        }
        self.target.close().await;
        self.target
    }

    async fn drive(&mut self) -> Result<(), SinkError> {
        loop {
            // Group commit: take everything waiting, then make the commits it completes
            // durable at once. A busy lane flushes larger batches (what came in during its last
            // flush); a quiet one flushes a commit as soon as its mark arrives.
            match self.rx.try_recv() {
                Ok(item) => {
                    self.take(item).await?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return self.flush().await,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if self.commit_waiting() {
                self.flush().await?;
                continue;
            }
            let due = self
                .flush_due()
                .map(|after| tokio::time::Instant::from_std(self.last_flush + after));
            tokio::select! {
                item = self.rx.recv() => match item {
                    Some(item) => self.take(item).await?,
                    None => return self.flush().await,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.flush().await?;
                }
                _ = self.woken.notified() => {}
            }
        }
    }

    /// The events of a commit were all received and are not durable yet (for the store: the
    /// checkpoint can move past them). A checkpoint that would only move past commits without
    /// events waits for the timer: flushing it at once would be a store transaction per commit
    /// of a table no mapping reads.
    fn commit_waiting(&self) -> bool {
        self.unflushed()
            && match &self.target {
                Target::Sink(_) => self.marked > self.status.borrow().durable,
                Target::Store { .. } => self.checkpoint().is_some(),
            }
    }

    /// How long after the last flush the next one is due, if one is.
    fn flush_due(&self) -> Option<Duration> {
        (self.unflushed() || self.checkpoint().is_some()).then_some(FLUSH_INTERVAL)
    }

    /// Whether it holds events or changes written and not yet durable.
    fn unflushed(&self) -> bool {
        self.unflushed_events > 0 || self.unflushed_changes > 0
    }

    /// For the store: the checkpoint a flush would record now, if it moves.
    fn checkpoint(&self) -> Option<Lsn> {
        let Target::Store { gate, recorded, .. } = &self.target else {
            return None;
        };
        let lsn = gate.iter().map(|g| g.borrow().durable).fold(self.marked, Lsn::min);
        (lsn > *recorded).then_some(lsn)
    }

    async fn take(&mut self, item: Item) -> Result<(), SinkError> {
        match item {
            Item::Events(batch, permit) => {
                let routed = routed(&batch, &self.routes);
                let n = routed.len();
                let began = Instant::now();
                let written = match &mut self.target {
                    Target::Sink(s) => s.write(&routed).await,
                    // The store appends the events at its flush, from `unflushed`.
                    Target::Store { .. } => Ok(()),
                };
                self.metrics.write.record(began.elapsed().as_secs_f64());
                self.unflushed.push((batch, permit));
                self.unflushed_events += n;
                if let Err(e) = written {
                    self.recover(e).await?;
                } else if self.unflushed_events >= self.flush_at {
                    self.flush().await?;
                }
            }
            Item::Changes(changes) => {
                self.unflushed_changes += changes.len();
                if let Target::Store { sink, .. } = &mut self.target {
                    sink.archive(changes);
                }
            }
            Item::Mark(lsn) => {
                self.marked = self.marked.max(lsn);
                let idle = !self.unflushed();
                if idle && matches!(self.target, Target::Sink(_)) {
                    // Nothing in flight: everything up to the mark is durable already.
                    self.durable(self.marked);
                }
            }
            Item::Flush(done) => {
                self.flush().await?;
                let _ = done.send(());
            }
        }
        Ok(())
    }

    /// Makes everything written durable; a transient failure is retried.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Err(e) = self.try_flush().await {
            self.recover(e).await?;
        }
        Ok(())
    }

    async fn try_flush(&mut self) -> Result<(), SinkError> {
        let marked = self.marked;
        let checkpoint = self.checkpoint();
        let began = Instant::now();
        match &mut self.target {
            Target::Sink(s) => {
                if self.unflushed_events > 0 {
                    s.flush().await?;
                }
            }
            Target::Store { sink, source, .. } => {
                if let Some(lsn) = checkpoint {
                    sink.checkpoint_at(lsn.0, source);
                }
                let events: Vec<&Outgoing> = self
                    .unflushed
                    .iter()
                    .flat_map(|(batch, _)| routed(batch, &self.routes))
                    .collect();
                sink.flush(&events).await?;
                if let (Some(lsn), Target::Store { recorded, .. }) = (checkpoint, &mut self.target) {
                    *recorded = lsn;
                }
            }
        }
        self.last_flush = Instant::now();
        self.metrics.flush.record((self.last_flush - began).as_secs_f64());
        if let Some(last) = self.metrics.durable(&self.unflushed, &self.routes) {
            let event = LastEvent {
                id: last.event.id.clone(),
                ty: last.event.ty.to_string(),
                subject: last.event.subject.clone(),
                lsn: last.event.lsn,
            };
            self.health.update(|s| {
                s.last_events.insert(self.name.clone(), event);
            });
        }
        self.unflushed.clear(); // gives the permits back
        self.unflushed_events = 0;
        self.unflushed_changes = 0;
        let durable = match &self.target {
            Target::Sink(_) => marked,
            Target::Store { recorded, .. } => *recorded,
        };
        self.durable(durable);
        Ok(())
    }

    /// After a transient error: back off, write every event that is not durable again, flush;
    /// until it works, a definite error, or the time to give up.
    async fn recover(&mut self, mut error: SinkError) -> Result<(), SinkError> {
        let since = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if !error.is_transient() {
                return Err(error);
            }
            if let Some(limit) = self.give_up_after
                && since.elapsed() >= limit
            {
                return Err(error.into_definite(format!(
                    "the sink failed for {limit:?}; start ficus again once it takes events (nothing that was not durable in it was acknowledged)"
                )));
            }
            let wait = backoff.next().max(error.retry_after().unwrap_or_default());
            telemetry::error("sink");
            warn!(sink = %self.name, error = %error.message(), retry_in = ?wait, unflushed = self.unflushed_events, "sink failed; retrying");
            let message = error.message().to_owned();
            self.status
                .send_modify(|s| s.failing = Some((s.failing.as_ref().map_or(since, |f| f.0), message.clone())));
            self.failing(Some((since, message)));
            self.wakers.wake();
            tokio::time::sleep(wait).await;
            match self.rewrite().await {
                Ok(()) => match self.try_flush().await {
                    Ok(()) => {
                        info!(sink = %self.name, after = ?since.elapsed(), "the sink takes events again");
                        self.status.send_modify(|s| s.failing = None);
                        self.failing(None);
                        self.wakers.wake();
                        return Ok(());
                    }
                    Err(e) => error = e,
                },
                Err(e) => error = e,
            }
        }
    }

    /// Tells `/readyz` whether the sink is failing (since when, why), or not.
    fn failing(&self, failing: Option<(Instant, String)>) {
        self.health.update(|s| {
            let kept = s.failing.iter().position(|(name, ..)| *name == self.name);
            match (kept, failing) {
                (Some(i), Some((_, error))) => s.failing[i].2 = error,
                (None, Some((since, error))) => s.failing.push((self.name.clone(), since, error)),
                (Some(i), None) => {
                    s.failing.remove(i);
                }
                (None, None) => {}
            }
        });
    }

    /// Writes every event that is not durable again, in order (a repeat has its id).
    async fn rewrite(&mut self) -> Result<(), SinkError> {
        // The store appends what is in `unflushed` at each flush: nothing to write again.
        let Target::Sink(s) = &mut self.target else {
            return Ok(());
        };
        for (batch, _) in &self.unflushed {
            s.write(&routed(batch, &self.routes)).await?;
        }
        Ok(())
    }

    fn durable(&mut self, lsn: Lsn) {
        let moved = self.status.send_if_modified(|s| {
            let moved = lsn > s.durable;
            s.durable = s.durable.max(lsn);
            moved
        });
        if moved {
            tracing::debug!(sink = %self.name, %lsn, "durable");
            self.wakers.wake();
        }
    }
}

/// The events of a batch a sink's routes take.
pub(crate) fn routed<'a>(batch: &'a [Outgoing], routes: &Routes) -> Vec<&'a Outgoing> {
    if routes.all() {
        batch.iter().collect()
    } else {
        batch.iter().filter(|o| routes.accepts(&o.event.ty)).collect()
    }
}
