//! Values are delivered as they are, or ficus says why not: unchanged TOASTed values under each
//! policy, generated columns, `json` text, identifiers that need encoding.

use crate::support::Scanned;
use crate::support::{Project, stderr};

/// Documents with a body big enough to be TOASTed (16 kB of hex that does not compress away),
/// under the default replica identity.
const DOCS: &str = "create table docs (id int primary key, title text not null, body text not null);
     insert into docs select 1, 'first', string_agg(md5(g::text), '') from generate_series(1, 500) g;";

fn doc_edited(policy: &str) -> String {
    format!(
        "[[event]]\nname = \"DocEdited\"\ntable = \"docs\"\non = [\"update\"]\nkey = \"new.id\"\ndata = \"new\"\n{policy}\n"
    )
}

#[tokio::test]
async fn an_unchanged_toasted_value_is_delivered_or_ficus_stops() {
    let p = Project::new(DOCS).await;
    p.mapping("docs.toml", &doc_edited(""));
    let check = p.ok(&["check"]);
    assert!(
        stderr(&check)
            .contains("warning: mappings/docs.toml:2:8: DocEdited reads title, body of public.docs on update"),
        "{}",
        stderr(&check)
    );
    p.catch_up();
    let body = p.scalar("select body from docs where id = 1").await;
    assert_eq!(body.len(), 16_000);
    let toasted = p
        .scalar("select (pg_relation_size(reltoastrelid) > 0)::text from pg_class where relname = 'docs'")
        .await;
    assert_eq!(toasted, "true", "the body is stored out of line");

    // Default: stop at the update, before acknowledging it.
    p.db.exec("update docs set title = 'second' where id = 1").await;
    let before = p.confirmed_flush().await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("DocEdited reads body of public.docs, which the update at ")
            && err.contains("left unchanged (id = 1)"),
        "{err}"
    );
    assert!(
        err.contains("REPLICA IDENTITY FULL") && err.contains("unchanged_toast"),
        "{err}"
    );
    assert_eq!(p.confirmed_flush().await, before, "the slot stays before the update");
    assert!(p.events().is_empty());

    // "reselect": read again by key, the value arrives whole.
    p.mapping("docs.toml", &doc_edited("unchanged_toast = \"reselect\""));
    p.catch_up();
    let events = p.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["title"], "second");
    assert_eq!(events[0]["data"]["body"], body.as_str());
    assert!(events[0].get("ficusunavailable").is_none());

    // "omit": left out, and the event says so.
    p.mapping("docs.toml", &doc_edited("unchanged_toast = \"omit\""));
    p.db.exec("update docs set title = 'third' where id = 1").await;
    p.catch_up();
    let omitted = p.events().pop().unwrap();
    assert_eq!(omitted["data"]["title"], "third");
    assert!(omitted["data"].get("body").is_none());
    assert_eq!(omitted["ficusunavailable"], "body");

    // REPLICA IDENTITY FULL: the old row carries it, under the default policy.
    p.mapping("docs.toml", &doc_edited(""));
    p.db.exec("alter table docs replica identity full; update docs set title = 'fourth' where id = 1")
        .await;
    let check = p.ok(&["check"]);
    assert!(!stderr(&check).contains("warning"), "{}", stderr(&check));
    p.catch_up();
    let full = p.events().pop().unwrap();
    assert_eq!(full["data"]["title"], "fourth");
    assert_eq!(full["data"]["body"], body.as_str());
}

#[tokio::test]
async fn a_generated_column_is_caught_by_check() {
    let p = Project::new(
        "create table lines (id int primary key, price int not null, qty int not null,
                             total int generated always as (price * qty) stored);",
    )
    .await;
    p.mapping(
        "lines.toml",
        "[[event]]\nname = \"LineAdded\"\ntable = \"lines\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { total = \"new.total\" }\n",
    );
    let out = p.ficus(&["check"]).out();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("total is a generated column of public.lines (GENERATED ALWAYS AS (price * qty))"),
        "{err}"
    );
    assert!(err.contains("\"(new.price * new.qty)\""), "{err}");
    // The CEL the hint gives computes it.
    p.mapping(
        "lines.toml",
        "[[event]]\nname = \"LineAdded\"\ntable = \"lines\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { total = \"(new.price * new.qty)\" }\n",
    );
    p.catch_up();
    p.db.exec("insert into lines (id, price, qty) values (1, 3, 4)").await;
    p.catch_up();
    assert_eq!(p.events()[0]["data"]["total"], 12);
}

#[tokio::test]
async fn json_keeps_its_text_and_any_name_makes_a_valid_source() {
    let p = Project::new(
        r#"create table "Ordér Lines" (id int primary key, "Naïve" json, doc jsonb);
           insert into "Ordér Lines" values (1, '{"a": 1, "a": 2}', '{"b": 1.50, "c": [1, 2]}'),
                                            (2, '{"x": "\ud800"}', null);"#,
    )
    .await;
    p.mapping(
        "lines.toml",
        "[[event]]\nname = \"LineSeen\"\ntable = \"Ordér Lines\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\ndata = \"new\"\n",
    );
    p.catch_up();
    let text = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // json: its duplicate keys and its formatting, as Postgres keeps them.
    assert!(lines[0].contains(r#""Naïve":{"a": 1, "a": 2}"#), "{}", lines[0]);
    // jsonb: Postgres' own text of it, digits kept.
    assert!(lines[0].contains(r#""doc":{"b": 1.50, "c": [1, 2]}"#), "{}", lines[0]);
    // A lone surrogate no strict parser reads: the exact text, as a string.
    assert!(lines[1].contains(r#""Naïve":"{\"x\": \"\\ud800\"}""#), "{}", lines[1]);
    let events = p.events();
    assert_eq!(events.len(), 2, "every event parses");
    assert_eq!(events[0]["source"], "/ficus/shop/public.Ord%C3%A9r%20Lines");
}
