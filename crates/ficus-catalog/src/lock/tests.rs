//! One test per kind of breaking change, each refused under its mode and accepted with a
//! `version` bump; the lock file's round trip; what is retired, new, or unknown.

use ficus_mapping::{Schema, compile, parse_file};
use ficus_project::fixtures::Fixture;

use super::*;
use crate::events;

const ORDERS: &str = include_str!("../../../../examples/shop/mappings/tests/orders.toml");

fn tables(fixture: &str) -> Schema {
    Fixture::parse("orders.toml", fixture).unwrap().schema()
}

/// The events of one mapping of `public.orders` named `OrderShipped`.
fn shipped(rest: &str, tables: &Schema) -> Vec<EventVersion> {
    let text = format!("[[event]]\nname = \"OrderShipped\"\ntable = \"orders\"\nkey = \"new.id\"\n{rest}\n");
    let (file, errors) = parse_file("mappings/orders.toml", &text);
    assert!(errors.is_empty(), "{errors:?}");
    events(&compile(&[file], None).unwrap(), tables)
}

const BEFORE: &str = "on = [\"update\"]\ndata = { order_id = \"new.id\", total = \"new.total\", big = \"new.total >= 100.0\", was = \"old.status\" }";

fn locked(mode: &str) -> Lock {
    let schema = tables(ORDERS);
    let mut lock = Lock::default().release(&shipped(BEFORE, &schema));
    lock.events.get_mut("OrderShipped").unwrap().mode = Mode::parse(mode).unwrap();
    lock
}

/// The breaking changes of `after` against the lock under `mode`, as messages; and that a
/// `version` bump makes it a new, unlocked version instead.
fn breaks(mode: &str, after: &str, schema: &Schema) -> Vec<String> {
    let lock = locked(mode);
    let verdict = lock.check(&shipped(after, schema));
    let bumped = lock.check(&shipped(&format!("version = 2\n{after}"), schema));
    assert!(bumped.breaking.is_empty(), "{:?}", bumped.breaking);
    assert_eq!(bumped.unlocked, [("OrderShipped".to_owned(), 2)]);
    assert_eq!(bumped.retired, [("OrderShipped".to_owned(), 1)], "v1 is no longer made");
    verdict.breaking.iter().map(ToString::to_string).collect()
}

#[test]
fn the_released_shape_passes_unchanged() {
    let schema = tables(ORDERS);
    let verdict = locked("full_transitive").check(&shipped(BEFORE, &schema));
    assert!(verdict.breaking.is_empty() && verdict.retired.is_empty() && verdict.unlocked.is_empty());
}

#[test]
fn removing_a_required_field_breaks_backward() {
    let after =
        "on = [\"update\"]\ndata = { order_id = \"new.id\", total = \"new.total\", big = \"new.total >= 100.0\" }";
    assert_eq!(
        breaks("backward", after, &tables(ORDERS)),
        ["OrderShipped v1: data.was: a required field was removed (breaks its consumers under backward compatibility)"]
    );
}

#[test]
fn changing_a_type_breaks_backward() {
    let after = "on = [\"update\"]\ndata = { order_id = \"new.id\", total = \"string(new.total)\", big = \"new.total >= 100.0\", was = \"old.status\" }";
    let said = breaks("backward", after, &tables(ORDERS));
    assert_eq!(
        said,
        [
            "OrderShipped v1: data.total: its type changed from number to string (breaks its consumers under backward compatibility)"
        ]
    );
}

#[test]
fn making_a_field_nullable_breaks_backward() {
    let after = "on = [\"update\"]\ndata = { order_id = \"new.id\", total = \"new.total\", big = \"new.total >= 100.0 ? true : null\", was = \"old.status\" }";
    assert_eq!(
        breaks("backward", after, &tables(ORDERS)),
        ["OrderShipped v1: data.big: it became nullable (breaks its consumers under backward compatibility)"]
    );
}

#[test]
fn making_a_field_optional_breaks_backward() {
    // On inserts there is no old row: `was` is left out of those events.
    let after = "on = [\"insert\", \"update\"]\ndata = { order_id = \"new.id\", total = \"new.total\", big = \"new.total >= 100.0\", was = \"old.status\" }";
    assert_eq!(
        breaks("backward", after, &tables(ORDERS)),
        [
            "OrderShipped v1: data.was: it became optional (events may leave it out) (breaks its consumers under backward compatibility)"
        ]
    );
}

#[test]
fn a_column_retyped_in_the_database_breaks_the_same_version() {
    // The monolith made `total` text: the same mapping now gives strings.
    let retyped = ORDERS.replace("total = \"numeric(12,2) not null\"", "total = \"text not null\"");
    assert_eq!(
        breaks("backward", BEFORE, &tables(&retyped)),
        [
            "OrderShipped v1: data.total: its type changed from number to string (breaks its consumers under backward compatibility)"
        ]
    );
}

#[test]
fn adding_an_optional_field_is_fine_backward_and_a_required_one_breaks_forward() {
    let schema = tables(ORDERS);
    let optional = format!("{}, paid = \"new.paid_at\" }}", BEFORE.trim_end_matches(" }"));
    assert!(breaks("backward", &optional, &schema).is_empty());
    // `paid` is nullable but in every event: required. Forward: released events lack it.
    assert_eq!(
        breaks("forward", &optional, &schema),
        [
            "OrderShipped v1: data.paid: a required field was added (released events lack it) (breaks its consumers under forward compatibility)"
        ]
    );
    assert_eq!(breaks("full", &optional, &schema).len(), 1);
    assert!(breaks("none", &optional, &schema).is_empty());
}

#[test]
fn removing_any_field_breaks_forward_and_none_allows_everything() {
    let after = "on = [\"update\"]\ndata = { order_id = \"new.id\" }";
    let schema = tables(ORDERS);
    assert_eq!(breaks("forward", after, &schema).len(), 3);
    assert!(breaks("none", after, &schema).is_empty());
}

#[test]
fn transitive_modes_check_every_release_of_the_version() {
    let schema = tables(ORDERS);
    // Released: total a number; later (under `none`) a string. Now: a string again.
    let as_text = "on = [\"update\"]\ndata = { order_id = \"new.id\", total = \"string(new.total)\", big = \"new.total >= 100.0\", was = \"old.status\" }";
    let mut lock = locked("none").release(&shipped(as_text, &schema));
    assert_eq!(lock.events["OrderShipped"].versions[&1].len(), 2);
    lock.events.get_mut("OrderShipped").unwrap().mode = Mode::parse("backward").unwrap();
    assert!(
        lock.check(&shipped(as_text, &schema)).breaking.is_empty(),
        "the last release only"
    );
    lock.events.get_mut("OrderShipped").unwrap().mode = Mode::parse("backward_transitive").unwrap();
    let verdict = lock.check(&shipped(as_text, &schema));
    assert_eq!(verdict.breaking.len(), 1, "{:?}", verdict.breaking);
    assert_eq!(verdict.breaking[0].field, "total");
}

#[test]
fn the_lock_file_round_trips_and_keeps_old_versions_alive_alongside_new_ones() {
    let schema = tables(ORDERS);
    let lock = locked("full");
    let text = lock.to_text();
    assert_eq!(Lock::parse(&text).unwrap(), lock);
    insta::assert_snapshot!(text);
    // v1 kept alive next to v2 during a migration: both checked, neither retired.
    let both = format!(
        "{}\n\n[[event]]\nname = \"OrderShipped\"\nversion = 2\ntable = \"orders\"\non = [\"update\"]\nkey = \"new.id\"\ndata = {{ order_id = \"new.id\" }}\n",
        "[[event]]\nname = \"OrderShipped\"\ntable = \"orders\"\nkey = \"new.id\"\n".to_owned() + BEFORE
    );
    let (file, errors) = parse_file("mappings/orders.toml", &both);
    assert!(errors.is_empty(), "{errors:?}");
    let verdict = lock.check(&events(&compile(&[file], None).unwrap(), &schema));
    assert!(verdict.breaking.is_empty() && verdict.retired.is_empty(), "{verdict:?}");
    assert_eq!(verdict.unlocked, [("OrderShipped".to_owned(), 2)]);
    // Locking the new version alone retires v1, and keeps the event's mode.
    let v2 = shipped(&format!("version = 2\n{BEFORE}"), &schema);
    let relocked = lock.release(&v2);
    assert_eq!(
        relocked.events["OrderShipped"].versions.keys().collect::<Vec<_>>(),
        [&2]
    );
    assert_eq!(relocked.events["OrderShipped"].mode.name(), "full");
    assert!(
        Lock::parse("{\"events\": {\"A\": {\"compatibility\": \"sideways\"}}}")
            .unwrap_err()
            .contains("sideways")
    );
}
