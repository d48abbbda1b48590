//! The catalog as a static HTML site that opens from the file system (no server, no script):
//! an index of the events by aggregate and by table with the flow picture — tables → mapping
//! files → events → sinks, drawn as SVG — and a page per event: what makes it (table, operations,
//! condition, key, where the mapping is), its fields with their types, the sinks that get it and
//! where, an example, and its versions with what changed between them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde_json::{Value as Json, json};

use crate::lock::{Lock, Released, released, type_name};
use crate::sinks::Sink;
use crate::{EventVersion, schema_file, type_schema};

/// An example of an event version from a fixture: the event (as `[expect]` has it) and the file.
pub type Example = (Json, String);

/// What the site is made of.
pub struct Site<'a> {
    /// What the catalog is of (the source's name).
    pub title: &'a str,
    /// Every event version the mappings make.
    pub events: &'a [EventVersion],
    /// The configured sinks.
    pub sinks: &'a [Sink],
    /// Examples by event and version, from the fixtures' expectations.
    pub examples: &'a BTreeMap<(String, u32), Example>,
    /// The lock, for versions released and no longer made.
    pub lock: Option<&'a Lock>,
}

/// The page of an event, relative to the site's root.
pub fn event_page(name: &str) -> String {
    format!("events/{}.html", crate::safe_name(name))
}

/// Text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1d2430; }
a { color: #1a5fb4; }
h1 { margin-bottom: 0.2rem; }
.muted { color: #5e6673; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; width: 100%; }
th, td { border-bottom: 1px solid #d8dde3; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { background: #f3f5f7; padding: 0.8rem; overflow-x: auto; }
.version { border-left: 4px solid #1a5fb4; padding-left: 1rem; margin: 1.5rem 0; }
.version.retired { border-color: #a0a7b0; }
.flow { overflow-x: auto; border: 1px solid #d8dde3; }
.flow .node rect { fill: #fff; stroke: #5e6673; }
.flow .node.table rect { fill: #fdf3e1; }
.flow .node.mapping rect { fill: #eef2f7; }
.flow .node.event rect { fill: #e5f0fc; stroke: #1a5fb4; }
.flow .node.sink rect { fill: #e8f6ec; }
.flow .node text, .flow .heading { font: 12px system-ui, sans-serif; fill: #1d2430; }
.flow .heading { font-weight: 600; }
.flow .edge { fill: none; stroke: #98a1ad; stroke-width: 1.2; }
.flow .edge.replay { stroke-dasharray: 4 3; }
"#;

fn page(title: &str, root: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<link rel=\"stylesheet\" href=\"{root}style.css\">\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// The site's files: (path relative to its root, contents).
pub fn site(site: &Site) -> Vec<(String, String)> {
    let mut files = vec![("style.css".to_owned(), STYLE.to_owned())];
    let svg = flow_svg(site.events, site.sinks);
    files.push(("flow.svg".to_owned(), svg.clone()));
    files.push(("index.html".to_owned(), index(site, &svg)));
    let mut names: BTreeSet<&str> = site.events.iter().map(|e| e.name.as_str()).collect();
    if let Some(lock) = site.lock {
        names.extend(lock.events.keys().map(String::as_str));
    }
    for name in names {
        files.push((event_page(name), event(site, name)));
    }
    files
}

fn index(site: &Site, svg: &str) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "<h1>{} — event catalog</h1>", esc(site.title));
    let _ = writeln!(
        b,
        "<p class=\"muted\">Written by <code>ficus catalog</code> from the mappings and ficus.toml. \
         Machine-readable: <a href=\"asyncapi.json\">the AsyncAPI 3.0 document</a> and a \
         <a href=\"schemas/\">JSON Schema per event version</a>.</p>"
    );
    let _ = writeln!(
        b,
        "<h2 id=\"flow\">Flow</h2>\n<p class=\"muted\">Tables → mapping files → events → sinks (dashed: replay only). An event opens its page.</p>\n<div class=\"flow\">{svg}</div>"
    );

    // By aggregate.
    let mut by_aggregate: BTreeMap<&str, BTreeMap<&str, Vec<&EventVersion>>> = BTreeMap::new();
    for e in site.events {
        for s in &e.sources {
            let list = by_aggregate
                .entry(s.aggregate.as_str())
                .or_default()
                .entry(e.name.as_str())
                .or_default();
            if !list.iter().any(|x| x.version == e.version) {
                list.push(e);
            }
        }
    }
    let _ = writeln!(b, "<h2 id=\"aggregates\">Events by aggregate</h2>");
    for (aggregate, events) in &by_aggregate {
        let _ = writeln!(
            b,
            "<h3>{}</h3>\n<table>\n<tr><th>Event</th><th>Versions</th><th>From</th><th>Sinks</th></tr>",
            esc(aggregate)
        );
        for (name, versions) in events {
            let vs: Vec<String> = versions.iter().map(|v| format!("v{}", v.version)).collect();
            let tables: BTreeSet<String> = versions
                .iter()
                .flat_map(|v| v.sources.iter().map(|s| s.table.to_string()))
                .collect();
            let sinks: Vec<String> = site
                .sinks
                .iter()
                .filter(|s| s.takes(name))
                .map(|s| esc(&s.name))
                .collect();
            let _ = writeln!(
                b,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                event_page(name),
                esc(name),
                vs.join(", "),
                esc(&tables.into_iter().collect::<Vec<_>>().join(", ")),
                sinks.join(", ")
            );
        }
        let _ = writeln!(b, "</table>");
    }

    // By table.
    let mut by_table: BTreeMap<String, Vec<(&EventVersion, &crate::Source)>> = BTreeMap::new();
    for e in site.events {
        for s in &e.sources {
            by_table.entry(s.table.to_string()).or_default().push((e, s));
        }
    }
    let _ = writeln!(b, "<h2 id=\"tables\">Events by table</h2>");
    for (table, list) in &by_table {
        let _ = writeln!(
            b,
            "<h3>{}</h3>\n<table>\n<tr><th>Event</th><th>On</th><th>When</th></tr>",
            esc(table)
        );
        for (e, s) in list {
            let _ = writeln!(
                b,
                "<tr><td><a href=\"{}\">{}</a> v{}</td><td>{}</td><td><code>{}</code></td></tr>",
                event_page(&e.name),
                esc(&e.name),
                e.version,
                esc(&s.ops.join(", ")),
                esc(s.when.as_deref().unwrap_or(""))
            );
        }
        let _ = writeln!(b, "</table>");
    }

    let _ = writeln!(
        b,
        "<h2 id=\"sinks\">Sinks</h2>\n<table>\n<tr><th>Sink</th><th>Type</th><th>Where</th><th>Mode</th><th>Events</th></tr>"
    );
    for s in site.sinks {
        let events = if s.events.is_empty() {
            "all".to_owned()
        } else {
            s.events.join(", ")
        };
        let live = if s.live { "" } else { " (replay only)" };
        let _ = writeln!(
            b,
            "<tr><td>{}{live}</td><td>{}</td><td>{} <code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.kind),
            esc(s.address_is),
            esc(&s.address),
            s.host
                .as_ref()
                .map(|h| format!(" on <code>{}</code>", esc(h)))
                .unwrap_or_default(),
            esc(&s.mode),
            esc(&events)
        );
    }
    let _ = writeln!(b, "</table>");
    page(&format!("{} — event catalog", site.title), "", &b)
}

/// A version of an event: as the mappings make it now, or as the lock released it.
enum Version<'a> {
    Current(&'a EventVersion),
    Retired(&'a Released),
}

fn shape_of(v: &Version) -> Option<Released> {
    match v {
        Version::Current(e) => released(e),
        Version::Retired(r) => Some((*r).clone()),
    }
}

/// What changed from one version's fields to the next one's, in words.
pub fn changes(before: &Released, now: &Released) -> Vec<String> {
    let mut out = Vec::new();
    for (name, old) in before {
        match now.get(name) {
            None => out.push(format!("{name}: removed")),
            Some(new) => {
                if new.ty != old.ty {
                    out.push(format!("{name}: type {} → {}", type_name(&old.ty), type_name(&new.ty)));
                }
                if new.nullable != old.nullable {
                    out.push(format!(
                        "{name}: {}",
                        if new.nullable {
                            "now nullable"
                        } else {
                            "no longer nullable"
                        }
                    ));
                }
                if new.required != old.required {
                    out.push(format!(
                        "{name}: {}",
                        if new.required {
                            "now always present"
                        } else {
                            "now optional"
                        }
                    ));
                }
            }
        }
    }
    for (name, new) in now {
        if !before.contains_key(name) {
            let what = if new.required { "added" } else { "added, optional" };
            out.push(format!("{name}: {what} ({})", type_name(&new.ty)));
        }
    }
    out
}

fn event(site: &Site, name: &str) -> String {
    let mut versions: BTreeMap<u32, Version> = BTreeMap::new();
    if let Some(locked) = site.lock.and_then(|l| l.events.get(name)) {
        for (v, shapes) in &locked.versions {
            if let Some(last) = shapes.last() {
                versions.insert(*v, Version::Retired(last));
            }
        }
    }
    for e in site.events.iter().filter(|e| e.name == name) {
        versions.insert(e.version, Version::Current(e));
    }
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<p><a href=\"../index.html\">← all events</a></p>\n<h1>{}</h1>",
        esc(name)
    );
    let sinks: Vec<&Sink> = site.sinks.iter().filter(|s| s.takes(name)).collect();
    let mut previous: Option<(u32, Option<Released>)> = None;
    let mut sections = Vec::new();
    for (v, version) in &versions {
        let mut s = String::new();
        let retired = matches!(version, Version::Retired(_));
        let _ = writeln!(
            s,
            "<section class=\"version{}\" id=\"v{v}\">\n<h2>Version {v}{}</h2>",
            if retired { " retired" } else { "" },
            if retired {
                " <span class=\"muted\">— released in ficus.lock; no mapping makes it any more</span>"
            } else {
                ""
            }
        );
        match version {
            Version::Current(e) => {
                for source in &e.sources {
                    let _ = writeln!(
                        s,
                        "<p>From <strong>{}</strong> on {}{}; key <code>{}</code>; aggregate {}. \
                         <span class=\"muted\">Mapping: {}</span></p>",
                        esc(&source.table.to_string()),
                        esc(&source.ops.join(", ")),
                        source
                            .when
                            .as_ref()
                            .map(|w| format!(" when <code>{}</code>", esc(w)))
                            .unwrap_or_default(),
                        esc(&source.key),
                        esc(&source.aggregate),
                        esc(&source.origin)
                    );
                    let _ = writeln!(
                        s,
                        "<table>\n<tr><th>Field</th><th>Type</th><th>Null</th><th>Present</th><th>From</th></tr>"
                    );
                    for f in &source.shape.fields {
                        let from = crate::source_text(f);
                        let _ = writeln!(
                            s,
                            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                            esc(&f.name),
                            esc(&type_name(&type_schema(&f.ty))),
                            if f.nullable { "nullable" } else { "never null" },
                            if f.required { "always" } else { "may be left out" },
                            esc(&from)
                        );
                    }
                    let _ = writeln!(s, "</table>");
                    match source.payload.0 {
                        ficus_mapping::PayloadKind::Text => {
                            let _ = writeln!(
                                s,
                                "<p class=\"muted\">The data is text ({}): the outbox row's payload.</p>",
                                esc(&source.payload.1)
                            );
                        }
                        ficus_mapping::PayloadKind::Binary => {
                            let _ = writeln!(
                                s,
                                "<p class=\"muted\">The data is bytes ({}), in data_base64: the outbox row's payload.</p>",
                                esc(&source.payload.1)
                            );
                        }
                        ficus_mapping::PayloadKind::Json if source.stated => {
                            let _ = writeln!(
                                s,
                                "<p class=\"muted\">The object the application writes: its fields are the application's.</p>"
                            );
                        }
                        ficus_mapping::PayloadKind::Json if source.shape.open => {
                            let _ = writeln!(
                                s,
                                "<p class=\"muted\">The whole row: declare the table in a fixture for its columns.</p>"
                            );
                        }
                        ficus_mapping::PayloadKind::Json => {}
                    }
                    for (name, column) in &source.extensions {
                        let _ = writeln!(
                            s,
                            "<p class=\"muted\">Extension <code>{}</code>: column {} of the outbox row.</p>",
                            esc(name),
                            esc(column)
                        );
                    }
                }
                let _ = writeln!(
                    s,
                    "<p>JSON Schema: <a href=\"../schemas/{0}\">{0}</a></p>",
                    esc(&schema_file(name, *v))
                );
                if !sinks.is_empty() {
                    let _ = writeln!(s, "<p>Delivered to:</p>\n<ul>");
                    for sink in &sinks {
                        let _ = writeln!(
                            s,
                            "<li>{} ({}): {} <code>{}</code>, {} mode</li>",
                            esc(&sink.name),
                            esc(&sink.kind),
                            esc(sink.address_is),
                            esc(&sink.address_of(name, *v)),
                            esc(&sink.mode)
                        );
                    }
                    let _ = writeln!(s, "</ul>");
                }
                let (example, whence) = match site.examples.get(&(name.to_owned(), *v)) {
                    Some((event, file)) => (event.clone(), format!("from the fixture {file}")),
                    None => (
                        made_up(e),
                        "made up from the fields' types: no fixture makes this event yet".to_owned(),
                    ),
                };
                let _ = writeln!(
                    s,
                    "<h3>Example</h3>\n<p class=\"muted\">{}</p>\n<pre>{}</pre>",
                    esc(&whence),
                    esc(&serde_json::to_string_pretty(&example).unwrap_or_default())
                );
            }
            Version::Retired(r) => {
                let _ = writeln!(
                    s,
                    "<table>\n<tr><th>Field</th><th>Type</th><th>Null</th><th>Present</th></tr>"
                );
                for (field, f) in r.iter() {
                    let _ = writeln!(
                        s,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(field),
                        esc(&type_name(&f.ty)),
                        if f.nullable { "nullable" } else { "never null" },
                        if f.required { "always" } else { "may be left out" }
                    );
                }
                let _ = writeln!(s, "</table>");
            }
        }
        let shape = shape_of(version);
        if let Some((pv, before)) = &previous {
            let _ = writeln!(s, "<h3>Changed from version {pv}</h3>");
            match (before, &shape) {
                (Some(before), Some(now)) => {
                    let list = changes(before, now);
                    if list.is_empty() {
                        let _ = writeln!(s, "<p>The same fields.</p>");
                    } else {
                        let _ = writeln!(s, "<ul>");
                        for c in list {
                            let _ = writeln!(s, "<li><code>{}</code></li>", esc(&c));
                        }
                        let _ = writeln!(s, "</ul>");
                    }
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "<p class=\"muted\">Not known: a whole row of an undeclared table.</p>"
                    );
                }
            }
        }
        let _ = writeln!(s, "</section>");
        sections.push(s);
        previous = Some((*v, shape));
    }
    // The newest version first.
    for s in sections.iter().rev() {
        b.push_str(s);
    }
    page(&format!("{name} — event catalog"), "../", &b)
}

/// An example event of a version from its fields' types.
fn made_up(event: &EventVersion) -> Json {
    let mut data = serde_json::Map::new();
    if let Some(source) = event.sources.first() {
        for f in &source.shape.fields {
            data.insert(f.name.clone(), sample(&f.ty));
        }
    }
    json!({ "type": event.name, "subject": "1", "eventversion": event.version, "data": data })
}

fn sample(ty: &ficus_mapping::JsonType) -> Json {
    use ficus_mapping::JsonType as T;
    match ty {
        T::Boolean => json!(true),
        T::Integer => json!(1),
        T::Number { .. } => json!(10.5),
        T::String {
            format: Some("date-time"),
            ..
        } => json!("2026-01-01T10:00:00Z"),
        T::String {
            format: Some("date"), ..
        } => json!("2026-01-01"),
        T::String { base64: true, .. } => json!("AQI="),
        T::String { .. } => json!("text"),
        T::Array(elem) => json!([sample(elem)]),
        T::Object | T::Any => json!({}),
        T::Rows(shape) => {
            let row: serde_json::Map<String, Json> =
                shape.fields.iter().map(|f| (f.name.clone(), sample(&f.ty))).collect();
            json!([row])
        }
    }
}

/// The flow picture: a column each of tables, mapping files, events and sinks, an edge where one
/// feeds the next. Events link to their pages (relative to the site's root).
pub fn flow_svg(events: &[EventVersion], sinks: &[Sink]) -> String {
    const W: usize = 220;
    const H: usize = 26;
    const GAP: usize = 34;
    const COL: usize = 270;
    const TOP: usize = 40;
    let mut tables = BTreeSet::new();
    let mut files = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut table_file = BTreeSet::new();
    let mut file_event = BTreeSet::new();
    for e in events {
        names.insert(e.name.clone());
        for s in &e.sources {
            let file = s
                .origin
                .rsplit_once(':')
                .map_or(s.origin.as_str(), |(f, _)| f)
                .to_owned();
            tables.insert(s.table.to_string());
            files.insert(file.clone());
            table_file.insert((s.table.to_string(), file.clone()));
            file_event.insert((file, e.name.clone()));
        }
    }
    let index = |set: &BTreeSet<String>, item: &str| set.iter().position(|x| x == item).unwrap_or(0);
    let rows = tables.len().max(files.len()).max(names.len()).max(sinks.len()).max(1);
    let width = 3 * COL + W + 20;
    let height = TOP + rows * GAP + 10;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flow\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"tables, mappings, events and sinks\">\n"
    );
    let _ = writeln!(
        s,
        "<style>{}</style>",
        STYLE
            .lines()
            .filter(|l| l.starts_with(".flow"))
            .map(|l| l.replacen(".flow ", "", 1))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (i, heading) in ["Tables", "Mappings", "Events", "Sinks"].iter().enumerate() {
        let _ = writeln!(
            s,
            "<text class=\"heading\" x=\"{}\" y=\"20\">{heading}</text>",
            10 + i * COL
        );
    }
    let y = |i: usize| TOP + i * GAP;
    let edge = |s: &mut String, from: (usize, usize), to: (usize, usize), class: &str| {
        let (ax, ay) = (10 + from.0 * COL + W, y(from.1) + H / 2);
        let (bx, by) = (10 + to.0 * COL, y(to.1) + H / 2);
        let _ = writeln!(
            s,
            "<path class=\"edge{class}\" d=\"M{ax},{ay} C{},{ay} {},{by} {bx},{by}\"/>",
            ax + 25,
            bx - 25
        );
    };
    for (t, f) in &table_file {
        edge(&mut s, (0, index(&tables, t)), (1, index(&files, f)), "");
    }
    for (f, e) in &file_event {
        edge(&mut s, (1, index(&files, f)), (2, index(&names, e)), "");
    }
    for (j, sink) in sinks.iter().enumerate() {
        for (i, name) in names.iter().enumerate() {
            if sink.takes(name) {
                edge(&mut s, (2, i), (3, j), if sink.live { "" } else { " replay" });
            }
        }
    }
    let node = |s: &mut String, col: usize, row: usize, kind: &str, name: &str, label: &str, href: Option<&str>| {
        let shown: String = if label.chars().count() > 30 {
            label.chars().take(29).collect::<String>() + "…"
        } else {
            label.to_owned()
        };
        let (x, yy) = (10 + col * COL, y(row));
        let g = format!(
            "<g class=\"node {kind}\" data-kind=\"{kind}\" data-name=\"{}\"><title>{}</title><rect x=\"{x}\" y=\"{yy}\" width=\"{W}\" height=\"{H}\" rx=\"4\"/><text x=\"{}\" y=\"{}\">{}</text></g>",
            esc(name),
            esc(label),
            x + 8,
            yy + 17,
            esc(&shown)
        );
        match href {
            Some(h) => {
                let _ = writeln!(s, "<a href=\"{}\">{g}</a>", esc(h));
            }
            None => {
                let _ = writeln!(s, "{g}");
            }
        }
    };
    for (i, t) in tables.iter().enumerate() {
        node(&mut s, 0, i, "table", t, t, None);
    }
    for (i, f) in files.iter().enumerate() {
        node(&mut s, 1, i, "mapping", f, f, None);
    }
    for (i, n) in names.iter().enumerate() {
        node(&mut s, 2, i, "event", n, n, Some(&event_page(n)));
    }
    for (i, sink) in sinks.iter().enumerate() {
        let label = format!("{} ({})", sink.name, sink.kind);
        node(&mut s, 3, i, "sink", &sink.name, &label, None);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests;
