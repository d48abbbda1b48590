//! Bad mappings and a badly set up source: clear messages, non-zero exits, nothing lost.

use ficus_testkit::Cluster;

use crate::support::Scanned;
use crate::support::{Project, stderr};

const ORDERS: &str = "create table orders (id int primary key, status text not null, total numeric not null);";

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
    let out = p.ficus(&["check"]).out();
    assert!(!out.status.success());
    insta::assert_snapshot!(stderr(&out));
    // run refuses to start on the same mappings, with the same errors
    let run = p.ficus(&["run", "--until-caught-up"]).out();
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
    let out = p.ficus(&["check"]).out();
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
    let out = p.ficus(&["run", "--until-caught-up"]).out();
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
    let out = p.ficus(&["check"]).out();
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
    let url = p.db.url().replace("//postgres:", &format!("//{role}:"));
    let out = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", url)
        .out();
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
    let out = p.ficus(&["check"]).out();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ficus.toml:3:1: unknown field `slott`"), "{err}");
    let out = p.ficus(&["run", "-c", "missing.toml"]).out();
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    p.config("");
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert!(
        stderr(&out).contains("no mapping file matches \"mappings/*.toml\""),
        "{}",
        stderr(&out)
    );
    p.mapping("empty.toml", "# nothing yet\n");
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the mapping files declare no [[event]]"),
        "{}",
        stderr(&out)
    );
}

/// A role of its own for one test, in `group` (see the testkit's pg_hba rules).
async fn login_role(p: &Project, group: &str, password: &str) -> String {
    let role = format!("{}_{group}", p.db.name);
    p.db.exec(&format!(
        "do $$ begin if not exists (select from pg_roles where rolname = '{group}') then create role {group}; end if; end $$;
         create role {role} login replication password '{password}' in role {group};
         alter table orders owner to {role};
         grant create on database {} to {role};",
        p.db.name
    ))
    .await;
    role
}

#[tokio::test]
async fn scram_password_over_tls_verify_full() {
    let p = Project::new(ORDERS).await;
    let Some(ca) = p.db.cluster.ca_path() else {
        panic!("the throwaway cluster has no TLS: is the openssl command installed?");
    };
    let role = login_role(&p, "ficus_tls", "s3cret pass").await;
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderPlaced\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    let url = |password: &str, mode: &str| {
        format!(
            "postgres://{role}:{password}@localhost:{}/{}?sslmode={mode}&sslrootcert={}",
            p.db.cluster.port,
            p.db.name,
            ca.display()
        )
    };
    let good = url("s3cret%20pass", "verify-full");
    let out = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", &good)
        .out();
    assert!(out.status.success(), "{}", stderr(&out));
    p.db.exec("insert into orders values (1, 'placed', 9.99)").await;
    let out = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", &good)
        .out();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(p.events().len(), 1);

    let wrong = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", url("nope", "verify-full"))
        .out();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("password authentication failed"),
        "{}",
        stderr(&wrong)
    );
    assert!(
        stderr(&wrong).contains("hint: check the user and password"),
        "{}",
        stderr(&wrong)
    );

    // pg_hba refuses this role without TLS: sslmode is honoured, not upgraded silently.
    let plain = p
        .ficus(&["check"])
        .env("FICUS_SOURCE_URL", url("s3cret%20pass", "disable"))
        .out();
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("no encryption"), "{}", stderr(&plain));
    p.ok(&["teardown"]);
    p.db.exec(&format!("drop owned by {role}; drop role {role};")).await;
}

#[tokio::test]
async fn an_unreachable_source_is_named_and_until_caught_up_gives_up() {
    let p = Project::new(ORDERS).await;
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderPlaced\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/x?sslmode=disable",
        ficus_testkit::free_port()
    );
    let check = p.ficus(&["check"]).env("FICUS_SOURCE_URL", &closed).out();
    assert_eq!(check.status.code(), Some(1), "an unreachable source is not a pass");
    assert!(stderr(&check).contains("connection refused"), "{}", stderr(&check));
    let began = std::time::Instant::now();
    let out = p
        .ficus(&["run", "--until-caught-up", "--give-up-after", "2"])
        .env("FICUS_SOURCE_URL", &closed)
        .out();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        began.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    let err = stderr(&out);
    assert!(
        err.contains("connection refused: nothing listens on 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("giving up"), "{err}");
    let unknown = p
        .ficus(&["check"])
        .env(
            "FICUS_SOURCE_URL",
            "postgres://postgres@no-such-host.invalid/x?sslmode=disable",
        )
        .out();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("host not found: no-such-host.invalid does not resolve"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test]
async fn a_least_privileged_role_streams_backfills_and_verifies_what_a_superuser_published() {
    let p = Project::new(&format!(
        "{ORDERS} create table refunds (id int primary key, amount int not null);
         insert into orders values (1, 'placed', 9.99);"
    ))
    .await;
    let role = format!("{}_reader", p.db.name);
    p.db.exec(&format!(
        "create role {role} login replication; grant select on orders to {role};"
    ))
    .await;
    // With the store, archiving: `verify` compares the table with what was delivered.
    p.config("\n[[sink]]\ntype = \"store\"\narchive = true\n");
    p.mapping(
        "orders.toml",
        "[[event]]\nname = \"OrderSeen\"\ntable = \"orders\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\n",
    );
    let as_role = p.db.url().replace("//postgres:", &format!("//{role}:"));
    // No publication yet, and the role may not make one: check says who must run what.
    let out = p.ficus(&["check"]).env("FICUS_SOURCE_URL", &as_role).out();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "there is no publication ficus, and user {role} may not create it"
        )),
        "{err}"
    );
    assert!(
        err.contains(r#"have an owner of the tables run: CREATE PUBLICATION "ficus" FOR TABLE "public"."orders""#),
        "{err}"
    );
    // A superuser makes it: the role checks out, streams and backfills.
    p.db.exec("create publication ficus for table orders with (publish_via_partition_root = true)")
        .await;
    let out = p.ficus(&["check"]).env("FICUS_SOURCE_URL", &as_role).out();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p
        .ficus(&["run", "--until-caught-up"])
        .env("FICUS_SOURCE_URL", &as_role)
        .out();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(p.events().len(), 1, "the order from before, as a snapshot event");
    p.db.exec("insert into orders values (2, 'placed', 1)").await;
    let backfill = p.ficus(&["backfill"]).env("FICUS_SOURCE_URL", &as_role).out();
    assert!(backfill.status.success(), "{}", stderr(&backfill));
    assert_eq!(
        p.events().len(),
        1 + 1 + 2,
        "the insert, then both orders again as snapshot events"
    );
    let verify = p.ficus(&["verify"]).env("FICUS_SOURCE_URL", &as_role).out();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("public.orders: "),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // A table it may not read: named, with the GRANT.
    p.mapping(
        "refunds.toml",
        "[[event]]\nname = \"RefundSeen\"\ntable = \"refunds\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    p.db.exec("alter publication ficus add table refunds").await;
    let out = p.ficus(&["check"]).env("FICUS_SOURCE_URL", &as_role).out();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            r#"hint: run: GRANT SELECT ON "public"."refunds" TO "{role}";"#
        )),
        "{}",
        stderr(&out)
    );
    p.ok(&["teardown"]);
    p.db.exec(&format!("drop owned by {role}; drop role {role};")).await;
}
