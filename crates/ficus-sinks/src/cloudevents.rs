//! The CloudEvents protocol bindings' two content modes, shared by the broker sinks.
//!
//! - *binary*: the body is the event's `data`; every other attribute is a header (`ce_id` in
//!   Kafka, `ce-id` in HTTP and NATS, `cloudEvents:id` in AMQP), and `datacontenttype` is the
//!   protocol's own content type;
//! - *structured*: the body is the whole event, the JSON line every sink gets, with the content
//!   type `application/cloudevents+json`.

use std::borrow::Cow;

use serde::Deserialize;

use crate::Outgoing;

/// The content type of a structured-mode message.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// A binding's content mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// The data as the body, the attributes as headers (the default).
    #[default]
    Binary,
    /// The whole event as the body.
    Structured,
}

/// A message body and its headers, in one content mode.
pub struct Message<'a> {
    /// The body.
    pub body: Cow<'a, [u8]>,
    /// The content type.
    pub content_type: &'a str,
    /// The attributes as headers (binary mode), with the binding's prefix; none in structured
    /// mode.
    pub headers: Vec<(String, Cow<'a, str>)>,
}

impl ContentMode {
    /// The message of an event: headers named `prefix` + the attribute's name.
    pub fn message<'a>(self, o: &'a Outgoing, prefix: &str) -> Message<'a> {
        match self {
            ContentMode::Structured => Message {
                body: Cow::Borrowed(&o.line),
                content_type: STRUCTURED,
                headers: vec![],
            },
            ContentMode::Binary => Message {
                body: Cow::Owned(o.data()),
                content_type: &o.event.datacontenttype,
                headers: o
                    .event
                    .attributes()
                    .into_iter()
                    .filter(|(name, _)| *name != "datacontenttype")
                    .map(|(name, value)| (format!("{prefix}{name}"), header_value(value)))
                    .collect(),
            },
        }
    }
}

/// A header value without line breaks or other control characters (a subject may come from a
/// column): they are replaced by spaces.
fn header_value(value: Cow<'_, str>) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        Cow::Owned(value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::event;

    #[test]
    fn binary_mode_puts_data_in_the_body_and_the_rest_in_headers() {
        let mut e = event("OrderPaid", "id-1");
        e.subject = "line\nbreak".into();
        let o = Outgoing::new(e);
        let m = ContentMode::Binary.message(&o, "ce_");
        assert_eq!(&*m.body, br#"{"id":"id-1"}"#);
        assert_eq!(m.content_type, "application/json");
        let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_subject",
                "ce_time",
                "ce_eventversion",
                "ce_lsn",
                "ce_txid"
            ]
        );
        assert_eq!(m.headers[4].1, "line break");
        let s = ContentMode::Structured.message(&o, "ce_");
        assert_eq!(&*s.body, &o.line[..]);
        assert!(s.headers.is_empty());
        assert_eq!(s.content_type, STRUCTURED);
    }

    #[test]
    fn binary_mode_of_an_outbox_payload_is_its_bytes_in_its_content_type_with_its_extensions() {
        let mut e = event("InvoiceIssued", "id-2");
        e.datacontenttype = "application/pdf".into();
        e.body = Some(ficus_model::Body::Binary(b"%PDF\xff\x00".to_vec()));
        e.extensions = vec![("tenantid".into(), "3".into())];
        let o = Outgoing::new(e);
        let line = String::from_utf8(o.line.to_vec()).unwrap();
        assert!(line.ends_with(r#","tenantid":"3","data_base64":"JVBERv8A"}"#), "{line}");
        let m = ContentMode::Binary.message(&o, "ce_");
        assert_eq!(&*m.body, b"%PDF\xff\x00", "the bytes, read back from the line");
        assert_eq!(m.content_type, "application/pdf");
        assert!(
            m.headers.iter().any(|(n, v)| n == "ce_tenantid" && v == "3"),
            "{:?}",
            m.headers
        );
        assert!(!m.headers.iter().any(|(n, _)| n == "ce_datacontenttype"));
        // Text is the text itself, not its JSON string.
        let mut t = event("InvoiceNoted", "id-3");
        t.datacontenttype = "text/csv".into();
        t.body = Some(ficus_model::Body::Text("a,\"b\"\n".into()));
        let o = Outgoing::new(t);
        assert_eq!(&*ContentMode::Binary.message(&o, "ce-").body, b"a,\"b\"\n");
    }
}
