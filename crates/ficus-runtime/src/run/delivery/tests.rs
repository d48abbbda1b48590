//! The delivery loop with in-memory sinks (and a real SQLite store): the slot's position is the
//! lowest commit every sink holds durable, a slow sink holds it back and only it, failures are
//! retried or stop ficus, routing, and the bound on events in flight.

use std::time::Duration;

use ficus_model::Lsn;
use ficus_sinks::memory::{MemorySink, event};
use ficus_sinks::{Routes, Sink};
use ficus_store::{EventStore, Mode, Store};
use tokio::sync::watch;

use super::{Delivery, LaneSettings};
use crate::RunError;

fn settings(name: &str, routes: &[&str], max_in_flight: usize) -> LaneSettings {
    LaneSettings {
        name: name.into(),
        routes: Routes::new(&routes.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap(),
        max_in_flight,
        give_up_after: None,
        from: Lsn(0),
    }
}

fn delivery(sinks: Vec<(LaneSettings, MemorySink)>) -> (Delivery, watch::Sender<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let sinks = sinks
        .into_iter()
        .map(|(s, m)| (s, Box::new(m) as Box<dyn Sink>))
        .collect();
    let mut d = Delivery::with_sinks(sinks, None, shutdown);
    d.start(Lsn(0), Lsn(0), "", None);
    (d, stop)
}

/// Waits (up to 10 s) until every sink holds `lsn` durable.
async fn durable_at(d: &Delivery, lsn: Lsn) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while d.durable() < lsn {
            d.progress().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not durable at {lsn} (durable: {})", d.durable()));
}

async fn commit(d: &mut Delivery, lsn: u64, events: &[(&str, &str)]) {
    let events = events.iter().map(|(ty, id)| event(ty, id)).collect();
    d.write(events).await.unwrap();
    d.mark(Lsn(lsn)).await.unwrap();
}

#[tokio::test]
async fn the_slot_moves_to_what_every_sink_holds_durable_and_a_slow_sink_holds_only_itself_back() {
    let fast = MemorySink::new();
    let slow = MemorySink::new();
    slow.0.lock().unwrap().blocked = true;
    let (mut d, _stop) = delivery(vec![
        (settings("fast", &[], 100), fast.clone()),
        (settings("slow", &[], 100), slow.clone()),
    ]);
    commit(&mut d, 10, &[("A", "a1"), ("A", "a2")]).await;
    commit(&mut d, 20, &[("A", "a3")]).await;
    // The fast sink has everything durable; the slow one nothing, and the position waits for it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while fast.durable_ids().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the fast sink got its events while the slow one was flushing");
    assert_eq!(fast.durable_ids(), ["a1", "a2", "a3"]);
    assert!(slow.durable_ids().is_empty());
    assert_eq!(
        d.durable(),
        Lsn(0),
        "the slot passed a commit the slow sink does not hold"
    );
    // The slow sink catches up: the position moves.
    slow.0.lock().unwrap().blocked = false;
    durable_at(&d, Lsn(20)).await;
    assert_eq!(slow.durable_ids(), ["a1", "a2", "a3"]);
}

#[tokio::test]
async fn a_commit_is_durable_once_every_sink_flushed_it() {
    let one = MemorySink::new();
    let two = MemorySink::new();
    let (mut d, _stop) = delivery(vec![
        (settings("one", &[], 100), one.clone()),
        (settings("two", &[], 100), two.clone()),
    ]);
    commit(&mut d, 10, &[("A", "a1")]).await;
    assert_eq!(d.flush().await.unwrap(), Lsn(10));
    assert_eq!(one.durable_ids(), ["a1"]);
    assert_eq!(two.durable_ids(), ["a1"]);
    // A commit without events is durable as soon as the sinks have nothing in flight.
    d.mark(Lsn(15)).await.unwrap();
    durable_at(&d, Lsn(15)).await;
}

/// Group commit: a lane flushes as soon as it has a commit's events and nothing more waits. With
/// tokio's clock paused, time moves only when every task waits for a timer: a lane that waited
/// for its flush timer would make the commit durable at the timer's time, not before.
#[tokio::test(start_paused = true)]
async fn a_commit_is_flushed_as_soon_as_its_events_are_in_not_on_a_timer() {
    let sink = MemorySink::new();
    let (mut d, _stop) = delivery(vec![(settings("one", &[], 100), sink.clone())]);
    let began = tokio::time::Instant::now();
    commit(&mut d, 10, &[("A", "a1"), ("A", "a2")]).await;
    durable_at(&d, Lsn(10)).await;
    assert_eq!(sink.durable_ids(), ["a1", "a2"]);
    assert!(
        began.elapsed() < crate::run::FLUSH_INTERVAL,
        "the commit waited {:?} to be durable",
        began.elapsed()
    );
    // The next commit too, on its own.
    let began = tokio::time::Instant::now();
    commit(&mut d, 20, &[("A", "a3")]).await;
    durable_at(&d, Lsn(20)).await;
    assert!(began.elapsed() < crate::run::FLUSH_INTERVAL);
}

#[tokio::test]
async fn transient_failures_are_retried_with_every_event_not_yet_durable() {
    let flaky = MemorySink::new();
    flaky.0.lock().unwrap().fail_transiently = 3;
    let (mut d, _stop) = delivery(vec![(settings("flaky", &[], 100), flaky.clone())]);
    commit(&mut d, 10, &[("A", "a1"), ("A", "a2")]).await;
    commit(&mut d, 20, &[("A", "a3")]).await;
    assert_eq!(d.flush().await.unwrap(), Lsn(20));
    let ids = flaky.durable_ids();
    // Repeats are allowed (at-least-once), losses are not, and the order holds.
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct, ["a1", "a2", "a3"], "{ids:?}");
    assert!(d.failed().is_none());
}

#[tokio::test]
async fn a_definite_failure_stops_with_the_sinks_name_and_holds_the_slot() {
    let ok = MemorySink::new();
    let bad = MemorySink::new();
    let (mut d, _stop) = delivery(vec![
        (settings("ok", &[], 100), ok.clone()),
        (settings("bad", &[], 100), bad.clone()),
    ]);
    commit(&mut d, 10, &[("A", "a1")]).await;
    d.flush().await.unwrap();
    bad.0.lock().unwrap().fail_definitely = true;
    commit(&mut d, 20, &[("A", "a2")]).await;
    let err = d.flush().await.unwrap_err();
    assert!(matches!(err, RunError::Sink(_)), "{err}");
    assert_eq!(err.to_string(), "sink bad: refused");
    assert_eq!(err.hint().as_deref(), Some("let it accept events"));
    assert!(d.failed().is_some());
    // The healthy sink has everything; the position stays at what the failed one holds.
    assert_eq!(ok.durable_ids(), ["a1", "a2"]);
    assert_eq!(d.durable(), Lsn(10));
}

#[tokio::test]
async fn each_sink_gets_the_events_its_routes_take() {
    let orders = MemorySink::new();
    let customers = MemorySink::new();
    let all = MemorySink::new();
    let (mut d, _stop) = delivery(vec![
        (settings("orders", &["Order*"], 100), orders.clone()),
        (settings("customers", &["CustomerRegistered"], 100), customers.clone()),
        (settings("all", &[], 100), all.clone()),
    ]);
    commit(
        &mut d,
        10,
        &[
            ("OrderPlaced", "o1"),
            ("CustomerRegistered", "c1"),
            ("OrderPaid", "o2"),
            ("ficus.gap", "g1"),
        ],
    )
    .await;
    d.flush().await.unwrap();
    assert_eq!(orders.durable_ids(), ["o1", "o2", "g1"]);
    assert_eq!(customers.durable_ids(), ["c1", "g1"]);
    assert_eq!(all.durable_ids(), ["o1", "c1", "o2", "g1"]);
}

#[tokio::test]
async fn a_sink_that_does_not_take_events_stops_ficus_from_reading_more_than_its_bound() {
    let stuck = MemorySink::new();
    stuck.0.lock().unwrap().blocked = true;
    let (mut d, stop) = delivery(vec![(settings("stuck", &[], 10), stuck.clone())]);
    // Batches go to the lanes every 1,000 events or at a commit: one commit of 10 fills the bound.
    commit(&mut d, 10, &(0..10).map(|_| ("A", "x")).collect::<Vec<_>>()).await;
    let more = tokio::time::timeout(Duration::from_millis(500), commit(&mut d, 20, &[("A", "y")])).await;
    assert!(more.is_err(), "a write went past the bound of events in flight");
    // A stop while waiting is an interruption, not a hang.
    stop.send(true).unwrap();
    let err = d
        .write(vec![event("A", "z")])
        .await
        .and(d.mark(Lsn(30)).await.map(|_| 0));
    assert!(matches!(err, Err(RunError::Interrupted { .. })), "{err:?}");
    assert!(stuck.durable_ids().is_empty());
}

#[tokio::test]
async fn the_store_records_no_further_than_every_other_sink_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&ficus_store::Location::Sqlite(dir.path().join("s.db")), Mode::Create)
        .await
        .unwrap();
    let slow = MemorySink::new();
    let (_stop, shutdown) = watch::channel(false);
    let mut d = Delivery::with_sinks(
        vec![(settings("slow", &[], 100), Box::new(slow.clone()))],
        Some((settings("store", &[], 100), store.clone())),
        shutdown,
    );
    d.start(Lsn(0), Lsn(0), "source", None);
    commit(&mut d, 10, &[("A", "a1")]).await;
    assert_eq!(d.flush().await.unwrap(), Lsn(10));
    assert_eq!(store.checkpoint("test").await.unwrap().map(|c| c.lsn), Some(10));
    slow.0.lock().unwrap().blocked = true;
    commit(&mut d, 20, &[("A", "a2")]).await;
    // The store appends and records on its own clock; it never records past the slow sink.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.checkpoint("test").await.unwrap().map(|c| c.lsn), Some(10));
    assert_eq!(d.durable(), Lsn(10));
    assert_eq!(d.store_recorded(), Lsn(10));
}
