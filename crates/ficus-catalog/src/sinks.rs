//! The configured sinks as the catalog describes them: where each puts an event (its topic,
//! subject, key or path template), on which server, in which CloudEvents content mode, and which
//! event types it takes. Read from `ficus.toml`'s `[[sink]]` tables with the sinks' defaults.

use ficus_project::{Config, ProjectError, SinkConfig};

/// A sink, as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sink {
    /// Its name (`name`, else its type).
    pub name: String,
    /// Its type (`kafka`, `nats`, ...).
    pub kind: String,
    /// The protocol a reader speaks to it, for AsyncAPI (`kafka`, `nats`, `redis`, `amqp`,
    /// `http`, `https`); `None` for a file, stdout and the store.
    pub protocol: Option<String>,
    /// The server, `host:port`, credentials left out.
    pub host: Option<String>,
    /// The path on the server (a webhook's).
    pub pathname: Option<String>,
    /// Where an event goes, a template over its attributes (`shop.{aggregate}.{type}`); for a
    /// file its path.
    pub address: String,
    /// What `address` is (`topic`, `subject`, `stream key`, `routing key`, `path`, ...).
    pub address_is: &'static str,
    /// The AMQP exchange.
    pub exchange: Option<String>,
    /// The Kafka message key's template (`{subject}` unless set).
    pub key: Option<String>,
    /// `binary` (data as the body, attributes as headers) or `structured` (the whole event as the
    /// body); `batch` for webhooks sending arrays of whole events.
    pub mode: String,
    /// The header prefix of the binary mode (`ce_` in Kafka, `ce-` in NATS and HTTP,
    /// `cloudEvents:` in AMQP, none in Redis, whose attributes are entry fields).
    pub header_prefix: &'static str,
    /// The event types it takes (patterns); all when empty.
    pub events: Vec<String>,
    /// Whether `ficus run` delivers to it (else replay and remap only).
    pub live: bool,
}

impl Sink {
    /// The sink a `[[sink]]` table describes, with its type's defaults; an unknown type is an
    /// error (the catalog does not guess where such a sink puts events).
    pub fn from_config(config: &SinkConfig) -> Result<Sink, String> {
        let setting = |key: &str, default: &str| config.setting(key).unwrap_or(default).to_owned();
        let mut sink = Sink {
            name: config.name().to_owned(),
            kind: config.kind.clone(),
            protocol: None,
            host: None,
            pathname: None,
            address: String::new(),
            address_is: "",
            exchange: None,
            key: None,
            mode: setting("mode", "binary"),
            header_prefix: "",
            events: config.events.clone(),
            live: config.live(),
        };
        match config.kind.as_str() {
            "kafka" => {
                sink.protocol = Some("kafka".into());
                sink.host = config
                    .setting("brokers")
                    .and_then(|b| b.split(',').next())
                    .map(|b| b.trim().to_owned());
                sink.address = setting("topic", "ficus.{type}");
                sink.address_is = "topic";
                sink.header_prefix = "ce_";
                sink.key = Some(setting("key", "{subject}"));
            }
            "nats" => {
                sink.protocol = Some("nats".into());
                sink.host = config.setting("url").map(|u| server(u).0);
                sink.address = setting("subject", "ficus.{type}");
                sink.address_is = "subject";
                sink.header_prefix = "ce-";
            }
            "redis" => {
                sink.protocol = Some("redis".into());
                sink.host = config.setting("url").map(|u| server(u).0);
                sink.address = setting("key", "ficus:{type}");
                sink.address_is = "stream key";
            }
            "amqp" => {
                sink.protocol = Some("amqp".into());
                sink.host = config.setting("url").map(|u| server(u).0);
                sink.address = setting("routing_key", "{type}");
                sink.address_is = "routing key";
                sink.exchange = config.setting("exchange").map(str::to_owned);
                sink.header_prefix = "cloudEvents:";
            }
            "http" => {
                let url = setting("url", "");
                sink.protocol = Some(if url.starts_with("https:") { "https" } else { "http" }.into());
                let (host, path) = server(&url);
                sink.host = Some(host);
                sink.address = if path.is_empty() { "/".into() } else { path.clone() };
                sink.pathname = Some(sink.address.clone());
                sink.address_is = "path";
                sink.header_prefix = "ce-";
            }
            "jsonl" => {
                sink.address = setting("path", "events.jsonl");
                sink.address_is = "file";
                sink.mode = "structured".into();
            }
            "store" => {
                sink.address = config
                    .setting("url")
                    .map(|u| server(u).0)
                    .unwrap_or_else(|| setting("path", "ficus.db"));
                sink.address_is = "event store";
                sink.mode = "structured".into();
            }
            "stdout" => {
                sink.address = "standard output".into();
                sink.address_is = "stream";
                sink.mode = "structured".into();
            }
            other => return Err(format!("unknown sink type {other:?}")),
        }
        Ok(sink)
    }

    /// Whether it takes events of this type (the patterns as the sink reads them).
    pub fn takes(&self, event: &str) -> bool {
        self.events.is_empty()
            || self
                .events
                .iter()
                .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(event)))
    }

    /// The address of an event version's messages: attributes known from the event alone
    /// (`type`, `eventversion`) filled in; the others stay as `{subject}` parameters.
    pub fn address_of(&self, event: &str, version: u32) -> String {
        self.address
            .replace("{type}", event)
            .replace("{eventversion}", &version.to_string())
    }
}

/// The config's sinks as the catalog shows them; stdout when none is configured (where `ficus
/// run` then writes).
pub fn sinks_of(config: &Config) -> Result<Vec<Sink>, ProjectError> {
    if config.sinks.is_empty() {
        let stdout = SinkConfig {
            kind: "stdout".into(),
            name: None,
            live: true,
            events: vec![],
            max_in_flight: None,
            settings: Default::default(),
            at: (0, 0),
        };
        return Ok(vec![Sink::from_config(&stdout).expect("stdout is a sink type")]);
    }
    config
        .sinks
        .iter()
        .map(|s| {
            Sink::from_config(s).map_err(|e| {
                config.sink_error(
                    s,
                    e,
                    "type is stdout, jsonl, store, kafka, nats, redis, amqp or http (docs/sinks.md)",
                )
            })
        })
        .collect()
}

/// `scheme://user:secret@host:port/path?q` → (`host:port`, `/path`): what can be shown of a URL.
fn server(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (host.to_owned(), path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_sink_type_is_an_error_not_a_guess() {
        let text = "[source]\n\n[[sink]]\nname = \"bus\"\ntype = \"kafak\"\nbrokers = \"b:9092\"\n";
        let config = Config::parse(std::path::Path::new("ficus.toml"), text).unwrap();
        let e = sinks_of(&config).unwrap_err().to_string();
        assert_eq!(e, "ficus.toml:3:1: sink \"bus\": unknown sink type \"kafak\"");
        let none = Config::parse(std::path::Path::new("ficus.toml"), "[source]\n").unwrap();
        let stdout = sinks_of(&none).unwrap();
        assert_eq!(
            (stdout.len(), stdout[0].kind.as_str(), stdout[0].live),
            (1, "stdout", true)
        );
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            server("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("127.0.0.1:5672".into(), "/%2f".into())
        );
        assert_eq!(
            server("https://hooks.example.com/ficus?token=x"),
            ("hooks.example.com".into(), "/ficus".into())
        );
        assert_eq!(server("nats://127.0.0.1:4222"), ("127.0.0.1:4222".into(), "".into()));
    }
}
