//! An event on its way to the sinks.

use bytes::Bytes;
use ficus_model::Event;

/// An event with its structured-mode JSON line, written once and shared by every sink.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The event.
    pub event: Event,
    /// The event as one CloudEvent in structured JSON mode, without a newline.
    pub line: Bytes,
}

impl Outgoing {
    /// The event, with its line written.
    pub fn new(event: Event) -> Outgoing {
        let mut line = Vec::with_capacity(256 + 64 * event.data.0.len());
        event.write_json(&mut line);
        Outgoing {
            event,
            line: line.into(),
        }
    }

    /// The event's `data` alone, for the binary mode of a protocol binding.
    pub fn data(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(self.line.len());
        self.event.write_data(&mut data);
        data
    }
}
