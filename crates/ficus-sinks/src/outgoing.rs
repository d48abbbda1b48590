//! An event on its way to the sinks.

use bytes::Bytes;
use ficus_model::{Data, Event};

/// An event with its structured-mode JSON line, written once and shared by every sink.
///
/// The line is all of the event a sink writes; `event` keeps the attributes that route it and
/// name it (type, subject, id, ...) with its `data` left empty: thousands of events wait in
/// flight for a slow sink, and each holds its data once, in the line. [`Outgoing::data`] reads
/// the data from there.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The event's attributes; its `data` is empty (it is in `line`).
    pub event: Event,
    /// The event as one CloudEvent in structured JSON mode, without a newline.
    pub line: Bytes,
}

impl Outgoing {
    /// The event, with its line written.
    pub fn new(mut event: Event) -> Outgoing {
        let mut line = Vec::with_capacity(256 + 64 * event.data.0.len());
        event.write_json(&mut line);
        // What the estimate gave too much is given back (in place: the line is not copied).
        line.shrink_to_fit();
        event.data = Data::default();
        Outgoing {
            event,
            line: line.into(),
        }
    }

    /// The event's `data` alone, for the binary mode of a protocol binding: its text in the line,
    /// as it is there.
    pub fn data(&self) -> Vec<u8> {
        // Every line is an event with its data: written by `Event::write_json`, or a stored line
        // that was read back whole (`Event::attributes_from_stored`).
        ficus_model::event::data_of_line(&self.line, &self.event.datacontenttype)
            .expect("an outgoing line is an event with its data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::event;

    #[test]
    fn an_outgoing_event_holds_its_data_once_in_its_line_and_gives_the_same_data_as_the_event() {
        let mut e = event("OrderPaid", "7");
        e.data = Data::from(serde_json::json!({"total": 120.5, "note": "a \"quoted\" }", "lines": [1, 2]}));
        let mut data = Vec::new();
        e.write_data(&mut data);
        let mut line = Vec::new();
        e.write_json(&mut line);
        let o = Outgoing::new(e.clone());
        assert_eq!(o.line, line, "the line is the event's");
        assert!(o.event.data.0.is_empty(), "the data is held once, in the line");
        assert_eq!(o.data(), data, "binary mode gets the data the event writes");
        assert_eq!(o.event.attributes(), e.attributes());
    }
}
