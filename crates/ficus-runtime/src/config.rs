//! `ficus.toml` as the runtime uses it: the project's config (read by `ficus-project`, with no
//! IO dependencies) with each sink's settings read by the sink's own config type.

use std::path::{Path, PathBuf};

pub use ficus_project::config::{
    DEFAULT_MAPPINGS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PUBLICATION, DEFAULT_SLOT, MetricsConfig, SourceConfig, URL_ENV,
};

/// The environment variable that holds the source's password (over `[source] password_file`
/// and a password in the url).
pub const PASSWORD_ENV: &str = "FICUS_SOURCE_PASSWORD";
use serde::Deserialize;

use crate::RunError;

/// The whole config.
#[derive(Debug)]
pub struct Config {
    /// The source database.
    pub source: SourceConfig,
    /// Where events go; stdout when none is configured.
    pub sinks: Vec<SinkConfig>,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

/// `[[sink]]`: what every sink has, and its type's own settings read by its config type (next
/// to the sink, it refuses keys it does not know).
#[derive(Debug)]
pub struct SinkConfig {
    /// The sink's name for commands (`ficus replay --to-sink`) and messages; default its type.
    pub name: Option<String>,
    /// Whether `ficus run` delivers to it; `false` keeps it for replay and remap (not the store).
    pub live: bool,
    /// The event types it gets (`["OrderPaid", "Customer*"]`); default all. ficus's own events
    /// (`ficus.gap`) go to every sink.
    pub events: Vec<String>,
    /// The most events written to it and not yet durable; past it, ficus waits (backpressure).
    pub max_in_flight: usize,
    /// The type and its settings.
    pub kind: SinkKind,
}

/// A sink's type, with its settings: one variant per sink module.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// Events on standard output, one per line.
    Stdout(ficus_sinks::stdout::StdoutConfig),
    /// Events appended to a file, one per line; fsynced before acknowledging.
    Jsonl(ficus_sinks::jsonl::JsonlConfig),
    /// The event store (docs/store.md).
    Store(ficus_store::StoreConfig),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(ficus_sinks::nats::NatsConfig),
    /// Redis Streams.
    #[cfg(feature = "redis")]
    Redis(ficus_sinks::redis::RedisConfig),
    /// RabbitMQ (AMQP 0-9-1).
    #[cfg(feature = "amqp")]
    Amqp(ficus_sinks::amqp::AmqpConfig),
    /// Webhooks.
    #[cfg(feature = "http")]
    Http(ficus_sinks::http::HttpConfig),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(ficus_sinks::kafka::KafkaConfig),
}

impl SinkConfig {
    /// Whether `ficus run` delivers to the sink (the store always).
    pub fn live(&self) -> bool {
        self.live || self.is_store()
    }

    /// Whether it is the store.
    pub fn is_store(&self) -> bool {
        matches!(self.kind, SinkKind::Store(_))
    }

    /// The sink's type, as written in the config.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Jsonl(_) => "jsonl",
            SinkKind::Store(_) => "store",
            #[cfg(feature = "nats")]
            SinkKind::Nats(_) => "nats",
            #[cfg(feature = "redis")]
            SinkKind::Redis(_) => "redis",
            #[cfg(feature = "amqp")]
            SinkKind::Amqp(_) => "amqp",
            #[cfg(feature = "http")]
            SinkKind::Http(_) => "http",
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(_) => "kafka",
        }
    }

    /// The sink's name: its `name`, else its type.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.type_name())
    }

    /// The sink's routes.
    pub fn routes(&self) -> Result<ficus_sinks::Routes, ficus_sinks::SinkError> {
        ficus_sinks::Routes::new(&self.events).map_err(|e| e.named(self.name()))
    }

    /// Builds the sink (not the store: [`Config::store_location`] opens that); connects to
    /// nothing yet (see [`ficus_sinks::Sink::health`]).
    pub fn build(&self, config: &Config) -> Result<Box<dyn ficus_sinks::Sink>, ficus_sinks::SinkError> {
        let sink: Box<dyn ficus_sinks::Sink> = match &self.kind {
            SinkKind::Stdout(c) => Box::new(c.build()),
            SinkKind::Jsonl(c) => Box::new(c.build(&config.dir)),
            #[cfg(feature = "nats")]
            SinkKind::Nats(c) => Box::new(c.build(&config.dir).map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "redis")]
            SinkKind::Redis(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "amqp")]
            SinkKind::Amqp(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "http")]
            SinkKind::Http(c) => Box::new(c.build(&config.dir).map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            SinkKind::Store(_) => {
                return Err(ficus_sinks::SinkError::definite(
                    "the store is not built as a line sink",
                    "report this as a bug",
                )
                .named(self.name()));
            }
        };
        Ok(sink)
    }
}

impl Config {
    /// Reads a config file: the project's config, each sink's settings read by its type, and
    /// each sink built once (templates and the like are checked; nothing connects yet).
    pub fn load(path: &Path) -> Result<Config, RunError> {
        Config::from_project(ficus_project::Config::load(path)?)
    }

    /// Parses a config file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Config, RunError> {
        Config::from_project(ficus_project::Config::parse(path, text)?)
    }

    /// The project's config with its sinks' settings read and checked.
    pub fn from_project(project: ficus_project::Config) -> Result<Config, RunError> {
        let mut sinks = Vec::with_capacity(project.sinks.len());
        for sink in &project.sinks {
            let mut table = sink.settings.clone();
            table.insert("type".into(), toml::Value::String(sink.kind.clone()));
            let kind = SinkKind::deserialize(toml::Value::Table(table))
                .map_err(|e| project.sink_error(sink, e.message().trim(), "see docs/sinks.md"))?;
            sinks.push(SinkConfig {
                name: sink.name.clone(),
                live: sink.live,
                events: sink.events.clone(),
                max_in_flight: sink.max_in_flight(),
                kind,
            });
        }
        let config = Config {
            source: project.source.clone(),
            sinks,
            dir: project.dir.clone(),
            metrics: project.metrics.clone(),
        };
        for (sink, written) in config.sinks.iter().zip(&project.sinks) {
            if let Err(e) = sink.routes() {
                return Err(project
                    .sink_error(written, e.message(), e.hint().unwrap_or_default())
                    .into());
            }
            if !sink.is_store()
                && let Err(e) = sink.build(&config)
            {
                return Err(project
                    .sink_error(written, e.message(), e.hint().unwrap_or_default())
                    .into());
            }
        }
        Ok(config)
    }

    /// The config's store sink, if it has one.
    pub fn store(&self) -> Option<(&SinkConfig, &ficus_store::StoreConfig)> {
        self.sinks.iter().find_map(|s| match &s.kind {
            SinkKind::Store(c) => Some((s, c)),
            _ => None,
        })
    }

    /// Whether the config's store archives row changes.
    pub fn archives(&self) -> bool {
        self.store().is_some_and(|(_, c)| c.archive)
    }

    /// Where the config's store is, if it has a store sink.
    pub fn store_location(&self) -> Option<ficus_store::Location> {
        self.store().map(|(_, c)| c.location(&self.dir))
    }

    /// The source url: `FICUS_SOURCE_URL`, else `[source] url`.
    pub fn url(&self) -> Result<String, RunError> {
        std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.source.url.clone())
            .ok_or_else(|| {
                RunError::Config(format!(
                    "no source url\nhint: set [source] url in the config, or {URL_ENV}"
                ))
            })
    }

    /// The source: its url (see [`Config::url`]) with the password from `FICUS_SOURCE_PASSWORD`,
    /// else from `[source] password_file`, else the url's own.
    pub fn source_url(&self) -> Result<ficus_postgres::SourceUrl, RunError> {
        let url = ficus_postgres::SourceUrl::parse(&self.url()?)?;
        if let Some(password) = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
            return Ok(url.with_password(password));
        }
        let Some(file) = &self.source.password_file else {
            return Ok(url);
        };
        let path = self.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            RunError::Config(format!(
                "[source] password_file {}: {e}\nhint: write the source's password in it (one line), readable by ficus only (chmod 600)",
                path.display()
            ))
        })?;
        Ok(url.with_password(text.lines().next().unwrap_or_default().to_owned()))
    }

    /// A path from the config, resolved against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

pub use ficus_project::Loaded;

/// Reads and parses every mapping file the config names.
pub fn load_mappings(config: &Config) -> Result<Loaded, RunError> {
    Ok(ficus_project::mappings::load(&config.dir, &config.source.mappings)?)
}

/// The JSON Schema (2020-12) of `ficus.toml`, from the config types: `[source]`, and each
/// `[[sink]]` as one of the sink types, its own keys with the keys every sink has. For editors
/// (keys completed and checked as they are typed) and `ficus schemas`.
pub fn config_schema() -> serde_json::Value {
    use schemars::JsonSchema;
    use serde_json::{Value, json};
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let source = SourceConfig::json_schema(&mut generator).to_value();
    let metrics = MetricsConfig::json_schema(&mut generator).to_value();
    let common = ficus_project::SinkConfig::json_schema(&mut generator).to_value();
    let kinds = SinkKind::json_schema(&mut generator).to_value();
    let mut defs = serde_json::Map::new();
    for (name, schema) in generator.take_definitions(true) {
        defs.insert(name, schema);
    }
    let variants: Vec<Value> = kinds["oneOf"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut variant| {
            // A variant may be a reference to its config type's definition.
            if let Some(name) = variant["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
                variant = defs.get(name).cloned().unwrap_or(variant);
            }
            let mut merged = common.clone();
            let properties = merged["properties"].as_object_mut().expect("a sink's common keys");
            if let Some(own) = variant["properties"].as_object() {
                for (k, v) in own {
                    properties.insert(k.clone(), v.clone());
                }
            }
            let mut required: Vec<Value> = merged["required"].as_array().cloned().unwrap_or_default();
            for r in variant["required"].as_array().into_iter().flatten() {
                if !required.contains(r) {
                    required.push(r.clone());
                }
            }
            merged["required"] = Value::Array(required);
            merged["additionalProperties"] = json!(false);
            if let Some(d) = variant.get("description") {
                merged["description"] = d.clone();
            }
            merged
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ficus.toml",
        "description": "ficus's config: the source database and where events go (docs/config.md).",
        "type": "object",
        "additionalProperties": false,
        "required": ["source"],
        "properties": {
            "source": source,
            "metrics": metrics,
            "sink": {
                "description": "Where events go; stdout when none is configured (docs/sinks.md).",
                "type": "array",
                "items": { "oneOf": variants },
            },
        },
        "$defs": defs,
    })
}

#[cfg(test)]
mod schema_tests;
