//! Bad mappings and a badly set up source: clear messages, non-zero exits, nothing lost.

use ficus_testkit::Cluster;

use crate::support::Project;

const ORDERS: &str = "create table orders (id int primary key, status text not null, total numeric not null);";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn check_reports_three_mistakes_with_their_lines() {
    let p = Project::new(ORDERS).await;
    p.mapping(
        "orders.toml",
        r#"[[event]]
name  = "OrderPlaced"
table = "orders"
on    = ["insert"]
key   = "new.id"
data  = { order_id = "new.id", total = "new.totl" }

[[event]]
name  = "OrderPaid"
table = "orders"
on    = ["update"]
when  = "new.status = 'paid'"
key   = "new.id"

[[event]]
name   = "OrderShipped"
table  = "orders"
on     = ["update"]
key    = "new"
"#,
    );
    let out = p.ficus(&["check"]).output().unwrap();
    assert!(!out.status.success());
    insta::assert_snapshot!(stderr(&out));
    // run refuses to start on the same mappings, with the same errors
    let run = p.ficus(&["run", "--until-caught-up"]).output().unwrap();
    assert!(!run.status.success());
    assert!(stderr(&run).contains("3 error(s) in the mappings"), "{}", stderr(&run));
    assert!(
        p.confirmed_flush().await.is_none(),
        "no slot for mappings that do not check out"
    );
}

#[tokio::test]
async fn replica_identity_default_and_old_values() {
    let p = Project::new(ORDERS).await;
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderPaid\"\ntable = \"orders\"\non = [\"update\"]\nwhen = \"old.status != 'paid' && new.status == 'paid'\"\nkey = \"new.id\"\n",
    );
    let out = p.ficus(&["check"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("mappings/orders.toml:5:9: old.status is not sent"),
        "{err}"
    );
    assert!(
        err.contains(r#"ALTER TABLE "public"."orders" REPLICA IDENTITY FULL"#),
        "{err}"
    );
    p.db.exec("alter table orders replica identity full").await;
    p.ok(&["check"]);
}

#[tokio::test]
async fn wal_level_replica_is_refused_with_a_fix() {
    static REPLICA: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    let cluster = REPLICA.get_or_init(|| Cluster::start(&["-c", "wal_level=replica"]));
    let p = Project::on(cluster, ORDERS).await;
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderPlaced\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    let out = p.ficus(&["run", "--until-caught-up"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("wal_level = replica, and logical replication needs wal_level = logical"),
        "{err}"
    );
    assert!(
        err.contains("hint: run ALTER SYSTEM SET wal_level = logical; then restart Postgres"),
        "{err}"
    );
    let out = p.ficus(&["check"]).output().unwrap();
    assert!(!out.status.success(), "check reports the source's setup too");
    assert!(stderr(&out).contains("wal_level"));
}

#[tokio::test]
async fn missing_replication_privilege_is_named() {
    let p = Project::new(ORDERS).await;
    let role = format!("{}_app", p.db.name);
    p.db.exec(&format!("create role {role} login; grant select on orders to {role};"))
        .await;
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderPlaced\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    let url = p.db.url().replace("postgres@", &format!("{role}@"));
    let out = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "user {role} may not stream changes: it lacks the REPLICATION attribute"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("ALTER ROLE {role} WITH REPLICATION")), "{err}");
    p.db.exec(&format!("drop owned by {role}; drop role {role};")).await;
}

#[tokio::test]
async fn bad_config_points_at_the_line() {
    let p = Project::new(ORDERS).await;
    p.write("ficus.toml", "[source]\nslot = \"x\"\nslott = \"y\"\n");
    let out = p.ficus(&["check"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ficus.toml:3:1: unknown field `slott`"), "{err}");
    let out = p.ficus(&["run", "-c", "missing.toml"]).output().unwrap();
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}
