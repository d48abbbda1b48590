//! The NATS JetStream sink against a real nats-server of the test's own (stopped and started
//! again on the same port when a test needs a broker that goes down).

use std::collections::HashMap;

use async_nats::jetstream;
use ficus_testkit::Server;
use serde_json::Value;

use crate::brokers::{
    ACCOUNT_EVENTS, ACCOUNTS, Repeats, TICK, TICKS, accounts_through, check_refuses, kill_9_and_an_outage,
    offline_check_refuses,
};
use crate::support::Scanned;
use crate::support::{Project, stderr};

/// A message as a stream holds it.
#[derive(Debug)]
struct Stored {
    subject: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

/// Every message of a stream, in order.
async fn messages(port: u16, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let js = jetstream::new(client);
    let Ok(stream) = js.get_stream(stream).await else {
        return vec![]; // no stream, no messages
    };
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.first().map(|v| v.to_string()).unwrap_or_default()))
            .collect();
        out.push(Stored {
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.to_vec(),
        });
    }
    out
}

fn nats_sink(port: u16, extra: &str) -> String {
    format!("\n[[sink]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\n{extra}\n")
}

#[tokio::test]
async fn nats_gets_every_event_in_order_with_the_binding_headers_and_each_sink_its_routes() {
    let nats = Server::nats();
    let (p, events) = accounts_through(
        &format!(
            "{}{}",
            nats_sink(
                nats.port,
                "name = \"backbone\"\nsubject = \"shop.{type}.{subject}\"\n[sink.stream]\nname = \"SHOP\"\ncreate = true\nsubjects = [\"shop.>\"]"
            ),
            nats_sink(
                nats.port,
                "name = \"opened\"\nsubject = \"opened.{subject}\"\nmode = \"structured\"\nevents = [\"AccountOpened\"]\n[sink.stream]\nname = \"OPENED\"\ncreate = true"
            ),
        ),
        &[],
    )
    .await;

    // Binary mode: data as the body, every other attribute a ce- header; the id deduplicates.
    let shop = messages(nats.port, "SHOP").await;
    assert_eq!(shop.len(), events.len());
    for (m, e) in shop.iter().zip(&events) {
        let h = |name: &str| m.headers.get(name).map(String::as_str).unwrap_or("");
        assert_eq!(
            m.subject,
            format!(
                "shop.{}.{}",
                e["type"].as_str().unwrap(),
                e["subject"].as_str().unwrap()
            )
        );
        assert_eq!(h("Nats-Msg-Id"), e["id"]);
        for attribute in ["id", "source", "type", "subject", "time", "lsn", "txid", "specversion"] {
            assert_eq!(
                h(&format!("ce-{attribute}")),
                e[attribute].as_str().unwrap(),
                "{attribute}"
            );
        }
        assert_eq!(h("ce-eventversion"), "1");
        assert_eq!(h("Content-Type"), "application/json");
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body, e["data"]);
    }
    // Structured mode, routed: only AccountOpened, each the whole event.
    let opened = messages(nats.port, "OPENED").await;
    let expected: Vec<&Value> = events.iter().filter(|e| e["type"] == "AccountOpened").collect();
    assert_eq!(opened.len(), 3);
    for (m, e) in opened.iter().zip(expected) {
        assert_eq!(m.subject, format!("opened.{}", e["subject"].as_str().unwrap()));
        assert_eq!(
            m.headers.get("Content-Type").map(String::as_str),
            Some("application/cloudevents+json")
        );
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(&body, e);
    }
    // Nothing again on a second run.
    p.catch_up();
    assert_eq!(messages(nats.port, "SHOP").await.len(), 6);
}

#[tokio::test]
async fn nats_after_kill_9_and_a_broker_down_has_every_event_once() {
    let mut nats = Server::nats();
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&nats_sink(
        nats.port,
        "subject = \"ticks.{subject}\"\nmax_in_flight = 2000\ntimeout_secs = 2\n[sink.stream]\nname = \"TICKS\"\ncreate = true",
    ));
    let port = nats.port;
    let ids = move || async move {
        messages(port, "TICKS")
            .await
            .into_iter()
            .map(|m| m.headers["Nats-Msg-Id"].clone())
            .collect()
    };
    // The duplicate window drops every repeat.
    kill_9_and_an_outage(&p, &mut nats, ids, Repeats::None).await;
}

#[tokio::test]
async fn a_misconfigured_nats_sink_fails_check_with_its_name_and_a_hint() {
    let nats = Server::nats();
    let guarded = Server::start(|port, dir| {
        let mut cmd = std::process::Command::new(ficus_testkit::binary("nats-server"));
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "--user",
            "ficus",
            "--pass",
            "right",
            "-sd",
        ])
        .arg(dir);
        cmd
    });
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    let cases = [
        (
            "url = \"nats://no-such-host.invalid:4222\"".to_owned(),
            "sink nats: cannot connect to nats://no-such-host.invalid:4222",
        ),
        (
            format!("url = \"nats://ficus:wrong@127.0.0.1:{}\"", guarded.port),
            "authorization violation",
        ),
        (
            format!(
                "url = \"nats://127.0.0.1:{}\"\nsubject = \"nowhere.{{type}}\"",
                nats.port
            ),
            "sink nats: no stream captures nowhere.*",
        ),
        (
            format!(
                "url = \"nats://127.0.0.1:{}\"\n[sink.stream]\nname = \"ABSENT\"",
                nats.port
            ),
            "sink nats: stream ABSENT",
        ),
    ];
    for (settings, expected) in cases {
        p.config(&format!("\n[[sink]]\ntype = \"nats\"\n{settings}\n"));
        check_refuses(&p, &settings, expected);
    }
    // A bad template is refused when the config is read, before anything connects.
    p.config(&format!(
        "\n[[sink]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nsubject = \"shop.{{typo}}\"\n",
        nats.port
    ));
    offline_check_refuses(&p, "subject = \"shop.{typo}\": {typo} is not an attribute");
    // And ficus run refuses a sink check fails definitely before it creates a slot.
    p.config(&format!(
        "\n[[sink]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nsubject = \"nowhere.{{type}}\"\n",
        nats.port
    ));
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        p.confirmed_flush().await,
        None,
        "a slot was created for a sink that cannot take events"
    );
}

#[tokio::test]
async fn history_is_replayed_and_remapped_into_a_broker() {
    let nats = Server::nats();
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    p.config(&format!(
        "\n[[sink]]\ntype = \"store\"\narchive = true\n{}{}",
        nats_sink(
            nats.port,
            "name = \"history\"\nlive = false\nmode = \"structured\"\nsubject = \"history.{type}\"\n[sink.stream]\nname = \"HISTORY\"\ncreate = true"
        ),
        nats_sink(
            nats.port,
            "name = \"remapped\"\nlive = false\nsubject = \"remapped.{type}\"\n[sink.stream]\nname = \"REMAPPED\"\ncreate = true"
        ),
    ));
    p.catch_up();
    p.db.exec(
        "insert into accounts values (1, 'ada', 10.50), (2, 'bob', 0);
         update accounts set balance = 3 where id = 2;
         delete from accounts where id = 1;",
    )
    .await;
    p.catch_up();
    let live = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
    assert_eq!(live.lines().count(), 4);
    // Nothing went to the replay-only sinks while streaming.
    assert!(messages(nats.port, "HISTORY").await.is_empty());
    // A new service's topic, born from history: the stored events, byte for byte, in order.
    p.ok(&["replay", "--to-sink", "history"]);
    let history = messages(nats.port, "HISTORY").await;
    let lines: Vec<&str> = live.lines().collect();
    assert_eq!(
        history
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload))
            .collect::<Vec<_>>(),
        lines
    );
    // Remapped from the archive with the same mappings: the same events again (binary mode).
    p.ok(&["remap", "--to-sink", "remapped"]);
    let remapped = messages(nats.port, "REMAPPED").await;
    let ids: Vec<&str> = remapped.iter().map(|m| m.headers["ce-id"].as_str()).collect();
    let live_ids: Vec<String> = p
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, live_ids);
}
