//! Templates over an event's attributes: `"shop.{type}"`, `"events.{aggregate}.{subject}"`.

use std::borrow::Cow;

use ficus_model::Event;

use crate::SinkError;

/// The attributes a template may name.
const NAMES: [&str; 6] = ["type", "subject", "aggregate", "source", "eventversion", "id"];

/// A topic, subject, key or routing-key template; checked when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Attribute(&'static str),
}

impl Template {
    /// Parses `text`; `what` names the setting in messages (`topic`).
    pub fn parse(what: &str, text: &str) -> Result<Template, SinkError> {
        let bad = |message: String| {
            SinkError::definite(
                format!("{what} = {text:?}: {message}"),
                format!(
                    "a template is text with attributes in braces: {{{}}}",
                    NAMES.join("}, {")
                ),
            )
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(bad("a { is not closed".into()));
            };
            let name = &rest[open + 1..open + close];
            let Some(known) = NAMES.iter().find(|n| **n == name) else {
                return Err(bad(format!("{{{name}}} is not an attribute")));
            };
            parts.push(Part::Attribute(known));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(bad("a } is not opened".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(bad("it is empty".into()));
        }
        Ok(Template(parts))
    }

    /// Whether the template names no attribute (one topic for every event).
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The template with every attribute replaced by `value(name)` (a wildcard, say).
    pub fn render_with(&self, value: impl Fn(&str) -> Cow<'_, str>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Attribute(name) => out.push_str(&value(name)),
            }
        }
        out
    }

    /// The template for one event; `clean` rewrites each attribute's value (a broker's naming
    /// rules: no spaces in a NATS subject token, say).
    pub fn render(&self, event: &Event, clean: impl Fn(&str) -> Cow<'_, str>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Attribute(name) => {
                    let version;
                    let value: &str = match *name {
                        "type" => &event.ty,
                        "subject" => &event.subject,
                        "aggregate" => &event.aggregate,
                        "source" => &event.source,
                        "id" => &event.id,
                        _ => {
                            version = event.eventversion.to_string();
                            &version
                        }
                    };
                    out.push_str(&clean(value));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_attributes_and_bad_ones_say_why() {
        let t = Template::parse("topic", "shop.{type}.v{eventversion}").unwrap();
        assert!(!t.is_fixed());
        assert!(Template::parse("topic", "shop.events").unwrap().is_fixed());
        for (text, why) in [
            ("shop.{typ}", "{typ} is not an attribute"),
            ("shop.{type", "a { is not closed"),
            ("shop}", "a } is not opened"),
            ("", "it is empty"),
        ] {
            let err = Template::parse("topic", text).unwrap_err();
            assert!(err.to_string().contains(why), "{text}: {err}");
            assert!(err.hint().unwrap().contains("{subject}"));
        }
    }
}
