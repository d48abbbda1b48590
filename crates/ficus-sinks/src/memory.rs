//! An in-memory sink, for tests of the delivery loop without a file or a broker: it can be made
//! slow, or to fail transiently or definitely, from outside.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ficus_model::{Data, Event, Lsn, Time};

use crate::{Outgoing, Sink, SinkError};

/// What a [`MemorySink`] holds and how it behaves; shared with the test that made it.
#[derive(Debug, Default)]
pub struct Memory {
    /// Events written and not yet flushed.
    pub written: Vec<Outgoing>,
    /// Events made durable, in order.
    pub durable: Vec<Outgoing>,
    /// Flushes that succeeded.
    pub flushes: usize,
    /// The next writes/flushes fail transiently this many times.
    pub fail_transiently: usize,
    /// Every write and flush fails definitely from now on.
    pub fail_definitely: bool,
    /// While true, flushes wait (a sink that does not take events).
    pub blocked: bool,
}

/// A sink that keeps events in memory.
#[derive(Clone, Debug, Default)]
pub struct MemorySink(pub Arc<Mutex<Memory>>);

impl MemorySink {
    /// A new, empty sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// The ids of the durable events.
    pub fn durable_ids(&self) -> Vec<String> {
        let m = self.0.lock().unwrap();
        m.durable.iter().map(|e| e.event.id.clone()).collect()
    }

    fn check(&self) -> Result<(), SinkError> {
        let mut m = self.0.lock().unwrap();
        if m.fail_definitely {
            return Err(SinkError::definite("refused", "let it accept events"));
        }
        if m.fail_transiently > 0 {
            m.fail_transiently -= 1;
            return Err(SinkError::transient("not now"));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        self.check()?;
        let mut m = self.0.lock().unwrap();
        m.written.extend(events.iter().map(|e| (*e).clone()));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while self.0.lock().unwrap().blocked {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.check()?;
        let mut m = self.0.lock().unwrap();
        let written = std::mem::take(&mut m.written);
        m.durable.extend(written);
        m.flushes += 1;
        Ok(())
    }
}

/// An event of type `ty` with the id `id`, for tests.
pub fn event(ty: &str, id: &str) -> Event {
    Event {
        specversion: "1.0",
        id: id.to_owned(),
        source: "/ficus/test/public.t".into(),
        ty: ty.into(),
        aggregate: "public.t".into(),
        subject: "1".into(),
        time: Time::from_micros(0),
        datacontenttype: ficus_model::event::JSON.into(),
        extensions: Vec::new(),
        body: None,
        eventversion: 1,
        lsn: Lsn(1),
        txid: 1,
        backfill: None,
        unavailable: None,
        data: Data::from(serde_json::json!({ "id": id })),
    }
}
