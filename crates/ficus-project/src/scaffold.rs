//! A starting mapping file per table, from its schema: what `ficus init` writes.
//!
//! Each table gets `<Entity>Created` (inserts and snapshot rows), `<Entity>Updated` and
//! `<Entity>Deleted`, keyed by the primary key; a state-like column (an enum, or a `status` /
//! `state` column with few values) gets one transition event per value, as a commented
//! suggestion. Columns that look secret are left out, with a comment. What the schema makes
//! doubtful (no primary key, `old` values the replica identity does not send) comes back as
//! warnings for the caller to print.

use std::fmt::Write;

use ficus_model::PgType;

/// A table as the scaffold needs it.
#[derive(Clone, Debug)]
pub struct Table {
    /// Its schema (`public`).
    pub schema: String,
    /// Its name (`order_items`).
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order; empty without one.
    pub primary_key: Vec<String>,
    /// Whether its replica identity is `FULL` (updates and deletes send the whole old row).
    pub replica_identity_full: bool,
}

/// A column as the scaffold needs it.
#[derive(Clone, Debug)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type, as Postgres names it (`text`, `order_status`).
    pub type_name: String,
    /// The values it takes when it looks like a state: an enum's labels, or the few distinct
    /// values of a `status`/`state` column. `None` otherwise.
    pub states: Option<Vec<String>>,
    /// Its type as the stream converts it (a domain is its base type, an enum text).
    pub ty: PgType,
    /// A domain's base type, as Postgres names it (`numeric(12,2)`).
    pub base_type: Option<String>,
    /// Whether it is declared `NOT NULL`.
    pub not_null: bool,
}

impl Column {
    /// Its type as a fixture declares it: one that converts as the stream converts it
    /// (`numeric(12,2) not null` for a `NOT NULL` column of a domain over `numeric(12,2)`).
    pub fn declared(&self) -> String {
        let mut t = crate::recording::fixture_type(&self.type_name, &self.ty, self.base_type.as_deref());
        if self.not_null {
            t.push_str(" not null");
        }
        t
    }
}

/// A mapping file to write, and what to tell the user about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scaffold {
    /// The entity's name (`OrderItem`).
    pub entity: String,
    /// The file's name under `mappings/` (`order_items.toml`).
    pub file_name: String,
    /// The file.
    pub text: String,
    /// What the user should know (no primary key, the replica identity, left-out columns).
    pub warnings: Vec<String>,
}

/// The most values a `status`/`state` text column may take to be taken for a state.
pub const MAX_STATES: usize = 12;

/// Whether a column is named like a state (`status`, `state`, `order_status`, `payment_state`).
pub fn named_like_state(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    c == "status" || c == "state" || c.ends_with("_status") || c.ends_with("_state")
}

/// Whether a column's name looks secret: it is left out of the events.
pub fn looks_secret(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "token",
        "secret",
        "api_key",
        "apikey",
        "private_key",
        "salt",
        "otp",
        "ssn",
    ]
    .iter()
    .any(|s| c.split('_').any(|part| part == *s) || c.contains(s) && s.len() > 5)
}

/// The entity a table holds: singular and PascalCase (`order_items` → `OrderItem`,
/// `categories` → `Category`).
pub fn entity_name(table: &str) -> String {
    let words: Vec<&str> = table
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let w = w.to_ascii_lowercase();
            pascal(&if i == last { singular(&w) } else { w })
        })
        .collect()
}

/// The event of a state's value: `paid` → `Paid`, `in_progress` → `InProgress`.
fn state_event(entity: &str, value: &str) -> String {
    let words: String = value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| pascal(&w.to_ascii_lowercase()))
        .collect();
    format!("{entity}{words}")
}

fn pascal(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// English plurals as tables are named; a word it does not know stays as it is.
fn singular(word: &str) -> String {
    const SAME: [&str; 6] = ["series", "species", "news", "status", "data", "sms"];
    if SAME.contains(&word) || word.ends_with("ss") || word.ends_with("us") || word.ends_with("is") {
        return word.to_owned();
    }
    if word == "people" {
        return "person".to_owned();
    }
    if let Some(stem) = word.strip_suffix("ies")
        && stem.len() > 1
    {
        return format!("{stem}y");
    }
    for suffix in ["sses", "xes", "ches", "shes", "zzes"] {
        if word.ends_with(suffix) {
            return word[..word.len() - 2].to_owned();
        }
    }
    word.strip_suffix('s').unwrap_or(word).to_owned()
}

use crate::recording::{key_of as toml_key, quoted as toml_string};

/// A column of `row` in CEL: `new.id`, or `new["odd name"]`.
fn cel_column(row: &str, column: &str) -> String {
    let ident = column
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && column.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        format!("{row}.{column}")
    } else {
        format!("{row}[{}]", cel_string(column))
    }
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The key expression over `row`: the column, or the key's columns joined by `:`.
fn key_expr(row: &str, key: &[String]) -> String {
    match key {
        [one] => cel_column(row, one),
        many => many
            .iter()
            .map(|c| format!("string({})", cel_column(row, c)))
            .collect::<Vec<_>>()
            .join(" + ':' + "),
    }
}

/// `{ a = "new.a", ... }` of the columns.
fn data_of(row: &str, columns: &[&Column]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| format!("{} = {}", toml_key(&c.name), toml_string(&cel_column(row, &c.name))))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

/// The mapping file of a table.
pub fn mapping(table: &Table) -> Scaffold {
    let entity = entity_name(&table.name);
    let qualified = format!("{}.{}", table.schema, table.name);
    let mut warnings = Vec::new();
    let secret: Vec<&Column> = table.columns.iter().filter(|c| looks_secret(&c.name)).collect();
    let kept: Vec<&Column> = table.columns.iter().filter(|c| !looks_secret(&c.name)).collect();
    let mut text = format!(
        "# The events of {qualified}, written by `ficus init` from its schema: a start, to be named\n\
         # after what the business says happened (see docs/mappings.md).\n"
    );
    if !secret.is_empty() {
        let names: Vec<&str> = secret.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(text, "# Left out, as they look secret: {}.", names.join(", "));
        warnings.push(format!(
            "{qualified}: left out {} (named like a secret); add to data what events may carry",
            names.join(", ")
        ));
    }
    // Without a primary key: the first column stands in, and the old row needs FULL.
    let key: Vec<String> = if table.primary_key.is_empty() {
        let first = table.columns.first().map(|c| c.name.clone()).unwrap_or_default();
        warnings.push(format!(
            "{qualified} has no primary key: the events' key is {first}, which may not identify a row; \
             updates and deletes need ALTER TABLE {qualified} REPLICA IDENTITY FULL (or a primary key)"
        ));
        let _ = writeln!(
            text,
            "# No primary key: the key below is a guess; updates and deletes need\n#   ALTER TABLE {qualified} REPLICA IDENTITY FULL;"
        );
        vec![first]
    } else {
        table.primary_key.clone()
    };
    let table_line = toml_string(&qualified);
    let key_columns: Vec<&Column> = table.columns.iter().filter(|c| key.contains(&c.name)).collect();

    let event = |text: &mut String, name: &str, on: &str, when: Option<&str>, row: &str, data: &str, prefix: &str| {
        let _ = writeln!(text, "{}\n{prefix}[[event]]", prefix.trim_end());
        let _ = writeln!(text, "{prefix}name = {}", toml_string(name));
        let _ = writeln!(text, "{prefix}table = {table_line}");
        let _ = writeln!(text, "{prefix}on = {on}");
        if let Some(when) = when {
            let _ = writeln!(text, "{prefix}when = {}", toml_string(when));
        }
        let _ = writeln!(text, "{prefix}key = {}", toml_string(&key_expr(row, &key)));
        let _ = writeln!(text, "{prefix}data = {data}");
    };
    let all = data_of("new", &kept);
    event(
        &mut text,
        &format!("{entity}Created"),
        "[\"insert\", \"snapshot\"]",
        None,
        "new",
        &all,
        "",
    );
    event(
        &mut text,
        &format!("{entity}Updated"),
        "[\"update\"]",
        None,
        "new",
        &all,
        "",
    );
    // A delete's old row holds the key's columns under the default replica identity.
    let deleted = if table.replica_identity_full {
        data_of("old", &kept)
    } else {
        data_of("old", &key_columns)
    };
    event(
        &mut text,
        &format!("{entity}Deleted"),
        "[\"delete\"]",
        None,
        "old",
        &deleted,
        "",
    );

    for column in &table.columns {
        let Some(states) = &column.states else { continue };
        if looks_secret(&column.name) || states.is_empty() {
            continue;
        }
        let _ = writeln!(
            text,
            "\n# {} looks like a state ({}): an event per value it takes, to use instead of or\n\
             # beside {entity}Updated. Uncomment those the business names.",
            column.name, column.type_name
        );
        if !table.replica_identity_full {
            let _ = writeln!(
                text,
                "# They read old.{}, which updates send only with\n#   ALTER TABLE {qualified} REPLICA IDENTITY FULL;",
                column.name
            );
            warnings.push(format!(
                "{qualified}.{}: the suggested transition events read old values, which need ALTER TABLE {qualified} REPLICA IDENTITY FULL",
                column.name
            ));
        }
        for value in states {
            let when = format!(
                "{old} != {v} && {new} == {v}",
                old = cel_column("old", &column.name),
                new = cel_column("new", &column.name),
                v = cel_string(value)
            );
            event(
                &mut text,
                &state_event(&entity, value),
                "[\"update\"]",
                Some(&when),
                "new",
                &all,
                "# ",
            );
        }
    }
    Scaffold {
        entity,
        file_name: format!("{}.toml", table.name),
        text,
        warnings,
    }
}

/// A value for a fixture row: `n` = 1 for the first row, 2 for it changed.
fn sample(column: &Column, n: usize) -> String {
    let quoted = toml_string;
    if let Some(states) = column.states.as_ref().filter(|s| !s.is_empty()) {
        return quoted(&states[(n - 1) % states.len()]);
    }
    let text = match &column.ty {
        PgType::Bool => return (n == 1).to_string(),
        PgType::Int | PgType::Int8 => return n.to_string(),
        PgType::Array(_) => return "[]".into(),
        PgType::Float => format!("{n}.5"),
        PgType::Numeric => format!("{n}0.00"),
        PgType::Bytea => format!("\\x0{n}"),
        PgType::Json => ["{}", "{\"changed\": true}"][(n - 1) % 2].into(),
        PgType::Timestamptz => format!("2026-01-0{n} 10:00:00+00"),
        PgType::Timestamp => format!("2026-01-0{n} 10:00:00"),
        PgType::Date => format!("2026-01-0{n}"),
        PgType::Time => format!("1{n}:00:00"),
        PgType::Interval => format!("{n} days"),
        PgType::Text if column.type_name == "uuid" => format!("00000000-0000-0000-0000-00000000000{n}"),
        PgType::Text => format!("{} {n}", column.name),
    };
    quoted(&text)
}

/// `{ a = 1, ... }` of the columns, with `changed` given its second value.
fn sample_row(columns: &[&Column], changed: Option<&str>) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            let n = if changed == Some(c.name.as_str()) { 2 } else { 1 };
            format!("{} = {}", toml_key(&c.name), sample(c, n))
        })
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

/// The fixture file of a table (`mappings/tests/<table>.toml`): its columns with the types the
/// database gives them, and a row inserted, updated and deleted, to make into the cases the
/// business cares about. It expects nothing yet: `ficus test --accept` writes what the mappings
/// make, to review.
pub fn fixture(table: &Table) -> Scaffold {
    let (quoted, key_of) = (toml_string, toml_key);
    let entity = entity_name(&table.name);
    let qualified = format!("{}.{}", table.schema, table.name);
    let shown = if table.schema == "public" {
        table.name.clone()
    } else {
        qualified.clone()
    };
    let mut text = format!(
        "# Fixtures of {qualified}, written by `ficus init`: row changes that `ficus test` runs through\n\
         # the mappings with no database. Make them the cases the business cares about; then\n\
         # `ficus test --accept` writes the events the mappings make as the expectation, to review.\n\
         # The columns' types are the database's (a domain's by its base type), so values convert\n\
         # exactly as `ficus run` converts them. See docs/mappings.md#testing-mappings-ficus-test.\n\n"
    );
    let _ = writeln!(text, "[tables.{}]", quoted(&qualified));
    if !table.primary_key.is_empty() {
        let key: Vec<String> = table.primary_key.iter().map(|k| quoted(k)).collect();
        let _ = writeln!(text, "key = [{}]", key.join(", "));
    }
    let identity = if table.replica_identity_full { "full" } else { "default" };
    let _ = writeln!(text, "replica_identity = \"{identity}\"");
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{} = {}", key_of(&c.name), quoted(&c.declared())))
        .collect();
    let _ = writeln!(text, "columns = {{ {} }}", columns.join(", "));

    let all: Vec<&Column> = table.columns.iter().collect();
    let key_columns: Vec<&Column> = all
        .iter()
        .copied()
        .filter(|c| table.primary_key.contains(&c.name))
        .collect();
    // The column the update changes: a state when there is one, else the first that is not key.
    let changed = table
        .columns
        .iter()
        .filter(|c| !table.primary_key.contains(&c.name) && !looks_secret(&c.name))
        .find(|c| c.states.is_some())
        .or_else(|| {
            table
                .columns
                .iter()
                .find(|c| !table.primary_key.contains(&c.name) && !looks_secret(&c.name))
        })
        .map(|c| c.name.as_str());
    let change = |text: &mut String, comment: &str, op: &str, old: Option<String>, new: Option<String>| {
        let _ = writeln!(
            text,
            "\n# {comment}\n[[change]]\ntable = {}\nop = \"{op}\"",
            quoted(&shown)
        );
        if let Some(old) = old {
            let _ = writeln!(text, "old = {old}");
        }
        if let Some(new) = new {
            let _ = writeln!(text, "new = {new}");
        }
    };
    change(
        &mut text,
        &format!("A new {entity}."),
        "insert",
        None,
        Some(sample_row(&all, None)),
    );
    // What a delete's old row carries: the whole row under FULL, the primary key's columns
    // otherwise.
    let old_row = |changed: Option<&str>| {
        if table.replica_identity_full {
            Some(sample_row(&all, changed))
        } else if key_columns.is_empty() {
            None
        } else {
            Some(sample_row(&key_columns, None))
        }
    };
    if table.primary_key.is_empty() && !table.replica_identity_full {
        let _ = writeln!(
            text,
            "\n# No primary key and REPLICA IDENTITY DEFAULT: Postgres refuses updates and deletes of a\n\
             # published table without a replica identity, so there are none here."
        );
    } else {
        let what = match changed {
            Some(c) => format!("The {entity} changed: {c}."),
            None => format!("The {entity} updated."),
        };
        // An update that keeps the key sends no old row under the default replica identity.
        let old = table.replica_identity_full.then(|| sample_row(&all, None));
        change(&mut text, &what, "update", old, Some(sample_row(&all, changed)));
        change(
            &mut text,
            &format!("The {entity} deleted."),
            "delete",
            old_row(changed),
            None,
        );
    }
    Scaffold {
        entity,
        file_name: format!("{}.toml", table.name),
        text,
        warnings: Vec::new(),
    }
}

/// A postgres url without its password (`postgres://ficus:pw@db/shop` → `postgres://ficus@db/shop`).
pub fn without_password(url: &str) -> String {
    let Some(scheme) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme..].find(['/', '?']).map_or(url.len(), |i| scheme + i);
    let Some(at) = url[scheme..authority_end].rfind('@').map(|i| scheme + i) else {
        return url.to_owned();
    };
    match url[scheme..at].find(':') {
        Some(colon) => format!("{}{}", &url[..scheme + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// The `ficus.toml` of a new project: the source (its url without a password: the file is
/// meant to be committed), its mappings, events to a file.
pub fn config(source_url: &str, tables: &[&Table]) -> String {
    let names: Vec<String> = tables.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
    format!(
        "# Written by `ficus init` for {}. See docs/config.md.\n\n\
         [source]\n\
         # The password comes from PGPASSWORD, or FICUS_SOURCE_URL (which overrides url).\n\
         url = {}\n\
         slot = \"ficus\"\n\
         publication = \"ficus\"\n\
         mappings = [\"mappings/*.toml\"]\n\n\
         # Events to a file to start with; docs/sinks.md has the brokers.\n\
         [[sink]]\n\
         type = \"jsonl\"\n\
         path = \"events.jsonl\"\n",
        names.join(", "),
        toml_string(&without_password(source_url))
    )
}

#[cfg(test)]
mod tests;
