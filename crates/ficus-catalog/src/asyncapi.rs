//! The AsyncAPI 3.0 document of the events: a channel per configured sink (its topic, subject,
//! key or path template as the address, the template's attributes as parameters), a `send`
//! operation per channel (ficus sends; consumers read), and per event version a message with
//! the CloudEvents binding of the sink's protocol — binary mode: the data as the payload and
//! every other attribute a header (`ce_type` in Kafka, `ce-type` in NATS and HTTP,
//! `cloudEvents:type` in AMQP, a field in Redis); structured mode: the whole CloudEvent.

use serde_json::{Map, Value as Json, json};

use crate::sinks::Sink;
use crate::{EventVersion, json_schema, safe_name};

/// The document: `title` names it (the source's name), `events` are every event version.
pub fn document(title: &str, events: &[EventVersion], sinks: &[Sink]) -> Json {
    let mut servers = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut schemas = Map::new();
    for event in events {
        let mut whole = json_schema(event);
        if let Json::Object(o) = &mut whole {
            // Inlined as AsyncAPI schemas (JSON Schema draft-07 with extensions): the catalog's
            // files are the 2020-12 originals.
            o.remove("$schema");
            o.remove("$id");
        }
        schemas.insert(id(event), whole);
    }
    for sink in sinks {
        let channel_id = safe_name(&sink.name);
        if let (Some(protocol), Some(host)) = (&sink.protocol, &sink.host) {
            let mut server = json!({
                "host": host,
                "protocol": protocol,
                "description": format!("the {} sink {:?}", sink.kind, sink.name),
            });
            if let Some(path) = sink.pathname.as_ref().filter(|p| p.as_str() != "/") {
                server["pathname"] = json!(path);
            }
            servers.insert(channel_id.clone(), server);
        }
        let taken: Vec<&EventVersion> = events.iter().filter(|e| sink.takes(&e.name)).collect();
        let mut messages = Map::new();
        for event in &taken {
            messages.insert(id(event), message(event, sink));
        }
        let mut channel = json!({
            "address": sink.address,
            "title": format!("{} ({})", sink.name, sink.kind),
            "description": describe_sink(sink),
            "messages": messages,
        });
        let parameters = parameters(&sink.address, &taken);
        if !parameters.is_empty() {
            channel["parameters"] = Json::Object(parameters);
        }
        if servers.contains_key(&channel_id) {
            channel["servers"] = json!([{ "$ref": format!("#/servers/{channel_id}") }]);
        }
        if let Some(exchange) = &sink.exchange {
            channel["bindings"] = json!({
                "amqp": {
                    "is": "routingKey",
                    "exchange": { "name": exchange },
                    "bindingVersion": "0.3.0",
                }
            });
        }
        channels.insert(channel_id.clone(), channel);
        let refs: Vec<Json> = taken
            .iter()
            .map(|e| json!({ "$ref": format!("#/channels/{channel_id}/messages/{}", id(e)) }))
            .collect();
        operations.insert(
            format!("send{}", pascal(&channel_id)),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel_id}") },
                "summary": format!("ficus sends events to {}", sink.name),
                "messages": refs,
            }),
        );
    }
    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": format!("{title} events"),
            "version": "1.0.0",
            "description": "The domain events ficus makes of the source's row changes, as CloudEvents 1.0. Each message is one version of one event (its `eventversion`); `ficus catalog` writes this document from the mappings and ficus.toml.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas },
    });
    if !servers.is_empty() {
        doc["servers"] = Json::Object(servers);
    }
    doc
}

/// An event version's id in the document: `OrderPaid.v2`.
fn id(event: &EventVersion) -> String {
    // A component key: `^[\w\d\.\-_]+$`.
    safe_name(&format!("{}.v{}", event.name, event.version))
}

fn pascal(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn describe_sink(sink: &Sink) -> String {
    let events = if sink.events.is_empty() {
        "every event".to_owned()
    } else {
        format!("the events {}", sink.events.join(", "))
    };
    let live = if sink.live { "" } else { " (replay and remap only)" };
    format!(
        "{} {}: {events}, in CloudEvents {} mode{live}",
        sink.address_is, sink.address, sink.mode
    )
}

/// The address's template attributes as channel parameters: `{type}` takes the event names.
fn parameters(address: &str, events: &[&EventVersion]) -> Map<String, Json> {
    let mut out = Map::new();
    for (name, about) in [
        ("type", "the event's type"),
        ("subject", "the aggregate's key (the event's subject)"),
        ("aggregate", "the event's aggregate"),
        ("source", "the source's URI"),
        ("eventversion", "the event's version"),
        ("id", "the event's id"),
    ] {
        if !address.contains(&format!("{{{name}}}")) {
            continue;
        }
        let mut p = json!({ "description": about });
        let values: Vec<String> = match name {
            "type" => events.iter().map(|e| e.name.clone()).collect(),
            "eventversion" => events.iter().map(|e| e.version.to_string()).collect(),
            "aggregate" => events
                .iter()
                .flat_map(|e| e.sources.iter().map(|s| s.aggregate.clone()))
                .collect(),
            _ => vec![],
        };
        let mut values: Vec<String> = values;
        values.sort();
        values.dedup();
        if !values.is_empty() {
            p["enum"] = json!(values);
        }
        out.insert(name.to_owned(), p);
    }
    out
}

/// A message of an event version as a sink sends it.
fn message(event: &EventVersion, sink: &Sink) -> Json {
    let schema_ref = format!("#/components/schemas/{}", id(event));
    let summary = event
        .sources
        .iter()
        .map(crate::describe)
        .collect::<Vec<_>>()
        .join("; or ");
    let mut m = json!({
        "name": event.name,
        "title": format!("{} v{}", event.name, event.version),
        "summary": summary,
    });
    match sink.mode.as_str() {
        "binary" => {
            // The data's own content type: JSON but for an outbox's text or bytes.
            let first = event.sources.first().map(|s| &s.payload);
            let one = first.filter(|p| event.sources.iter().all(|s| &s.payload == *p));
            m["contentType"] = json!(one.map_or("application/json", |p| p.1.as_str()));
            m["payload"] = match one.map(|p| p.0) {
                Some(ficus_mapping::PayloadKind::Binary) => json!({ "type": "string", "format": "binary" }),
                _ => json!({ "$ref": format!("{schema_ref}/properties/data") }),
            };
            m["headers"] = headers(event, sink.header_prefix);
        }
        "batch" => {
            m["contentType"] = json!("application/cloudevents-batch+json");
            m["payload"] = json!({ "type": "array", "items": { "$ref": schema_ref } });
        }
        _ => {
            m["contentType"] = json!("application/cloudevents+json");
            m["payload"] = json!({ "$ref": schema_ref });
        }
    }
    if sink.kind == "kafka" {
        let key = sink.key.as_deref().unwrap_or("{subject}");
        m["bindings"] = json!({
            "kafka": {
                "key": { "type": "string", "description": format!("the template {key}") },
                "bindingVersion": "0.5.0",
            }
        });
    }
    m
}

/// The CloudEvents attributes of the binary mode as headers, `prefix` before each name.
fn headers(event: &EventVersion, prefix: &str) -> Json {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let attributes = [
        ("specversion", json!({ "const": "1.0" }), true),
        (
            "id",
            json!({ "type": "string", "description": "deterministic: the same change gives the same id" }),
            true,
        ),
        ("source", json!({ "type": "string" }), true),
        ("type", json!({ "const": event.name }), true),
        (
            "subject",
            json!({ "type": "string", "description": "the aggregate's key" }),
            true,
        ),
        (
            "time",
            json!({ "type": "string", "format": "date-time", "description": "the source transaction's commit time" }),
            true,
        ),
        ("eventversion", json!({ "const": event.version.to_string() }), true),
        (
            "lsn",
            json!({ "type": "string", "description": "the commit's position in the source's WAL" }),
            true,
        ),
        ("txid", json!({ "type": "string" }), true),
        (
            "backfill",
            json!({ "type": "string", "description": "the backfill that read the row (snapshot events only)" }),
            false,
        ),
        (
            "ficusunavailable",
            json!({ "type": "string", "description": "fields left out because the source did not send them" }),
            false,
        ),
    ];
    for (name, schema, always) in attributes {
        let header = format!("{prefix}{name}");
        if always {
            required.push(Json::String(header.clone()));
        }
        properties.insert(header, schema);
    }
    for (name, column) in event.sources.iter().flat_map(|s| &s.extensions) {
        properties.insert(
            format!("{prefix}{name}"),
            json!({ "type": "string", "description": format!("column {column} of the outbox row (absent when null)") }),
        );
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

#[cfg(test)]
mod tests;
