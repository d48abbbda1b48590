//! The AMQP sink against RabbitMQ: the machine's broker (an exchange and queues of the test's
//! own) for what is published, and a node of the test's own for a broker that goes down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ficus_testkit::Server;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::brokers::{
    Repeats, TICK, TICKS, accounts_through, check_refuses, kill_9_and_an_outage, offline_check_refuses,
};
use crate::support::Scanned;
use crate::support::{Project, stderr};

const SHARED: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A message as a queue holds it.
#[derive(Debug)]
struct Got {
    routing_key: String,
    message_id: String,
    content_type: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn channel(url: &str) -> Channel {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    conn.create_channel().await.unwrap()
}

/// A durable queue bound to `exchange` (a durable topic exchange, declared) with `pattern`.
async fn bind(url: &str, exchange: &str, queue: &str, pattern: &str) {
    let ch = channel(url).await;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Deletes a test's queues and exchange from the shared broker.
async fn remove(url: &str, exchange: &str, queues: &[&str]) {
    let ch = channel(url).await;
    for queue in queues {
        ch.queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// Takes every message of a queue.
async fn take_all(url: &str, queue: &str) -> Vec<Got> {
    let ch = channel(url).await;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let props = &m.delivery.properties;
        let headers = props
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                            other => format!("{other:?}"),
                        };
                        (k.to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Got {
            routing_key: m.delivery.routing_key.to_string(),
            message_id: props.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default(),
            content_type: props.content_type().as_ref().map(|s| s.to_string()).unwrap_or_default(),
            headers,
            body: m.delivery.data.clone(),
        });
    }
    out
}

fn amqp_sink(url: &str, extra: &str) -> String {
    format!("\n[[sink]]\ntype = \"amqp\"\nurl = \"{url}\"\n{extra}\n")
}

#[tokio::test]
async fn amqp_gets_every_event_confirmed_with_the_binding_headers_and_each_sink_its_routes() {
    let exchange = format!("ficus.routes.{}", std::process::id());
    let (all, opened) = (format!("{exchange}.all"), format!("{exchange}.opened"));
    bind(SHARED, &exchange, &all, "shop.#").await;
    bind(SHARED, &exchange, &opened, "opened.#").await;
    let (_p, events) = accounts_through(
        &format!(
            "{}{}",
            amqp_sink(SHARED, &format!("name = \"all\"\nexchange = \"{exchange}\"\nrouting_key = \"shop.{{type}}\"")),
            amqp_sink(
                SHARED,
                &format!(
                    "name = \"opened\"\nexchange = \"{exchange}\"\nrouting_key = \"opened.{{subject}}\"\nmode = \"structured\"\nevents = [\"AccountOpened\"]\nmandatory = true"
                )
            ),
        ),
        &[],
    )
    .await;
    let got = take_all(SHARED, &all).await;
    assert_eq!(got.len(), events.len());
    for (m, e) in got.iter().zip(&events) {
        assert_eq!(m.routing_key, format!("shop.{}", e["type"].as_str().unwrap()));
        assert_eq!(m.message_id, e["id"].as_str().unwrap());
        assert_eq!(m.content_type, "application/json");
        for attribute in ["id", "source", "type", "subject", "time", "lsn", "txid", "specversion"] {
            assert_eq!(
                m.headers[&format!("cloudEvents:{attribute}")],
                e[attribute].as_str().unwrap(),
                "{attribute}"
            );
        }
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body, e["data"]);
    }
    let got = take_all(SHARED, &opened).await;
    let expected: Vec<&Value> = events.iter().filter(|e| e["type"] == "AccountOpened").collect();
    assert_eq!(got.len(), expected.len());
    for (m, e) in got.iter().zip(expected) {
        assert_eq!(m.content_type, "application/cloudevents+json");
        assert_eq!(&serde_json::from_slice::<Value>(&m.body).unwrap(), e);
    }
    remove(SHARED, &exchange, &[&all, &opened]).await;
}

#[tokio::test]
async fn amqp_after_kill_9_and_a_broker_down_has_every_event() {
    let mut rabbit = Server::rabbitmq();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port);
    bind(&url, "shop", "ticks", "#").await;
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&amqp_sink(
        &url,
        "exchange = \"shop\"\nmax_in_flight = 2000\ntimeout_secs = 2",
    ));
    let taken: Arc<Mutex<Vec<String>>> = Arc::default();
    let ids = move || {
        let (url, taken) = (url.clone(), taken.clone());
        async move {
            // Reads take the messages: keep what was taken before.
            if let Ok(Ok(conn)) = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await
            {
                let ch = conn.create_channel().await.unwrap();
                while let Ok(Some(m)) = ch.basic_get("ticks".into(), BasicGetOptions { no_ack: true }).await {
                    let id = m.delivery.properties.message_id().as_ref().unwrap().to_string();
                    taken.lock().unwrap().push(id);
                }
            }
            taken.lock().unwrap().clone()
        }
    };
    kill_9_and_an_outage(&p, &mut rabbit, ids, Repeats::Allowed).await;
}

#[tokio::test]
async fn a_misconfigured_amqp_sink_fails_check_with_its_name_and_a_hint() {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    let exchange = format!("ficus.{}", p.db.name);
    let cases = [
        (
            "amqp://guest:guest@no-such-host.invalid:5672/%2f".to_owned(),
            String::new(),
            "sink amqp: cannot connect",
        ),
        (
            "amqp://guest:wrong@127.0.0.1:5672/%2f".to_owned(),
            String::new(),
            "hint: check the user, the password and the vhost",
        ),
        (
            SHARED.to_owned(),
            format!("exchange = \"{exchange}.absent\""),
            "does not exist",
        ),
    ];
    for (url, extra, expected) in cases {
        let extra = if extra.is_empty() {
            format!("exchange = \"{exchange}\"")
        } else {
            extra
        };
        p.config(&amqp_sink(&url, &extra));
        check_refuses(&p, &url, expected);
    }
    // A template naming an attribute events do not have is refused when the config is read.
    p.config(&amqp_sink(
        SHARED,
        &format!("exchange = \"{exchange}\"\nrouting_key = \"shop.{{kind}}\""),
    ));
    offline_check_refuses(&p, "{kind}");
    // mandatory = true and no queue takes the events: ficus stops rather than let them be dropped.
    p.config(&amqp_sink(
        SHARED,
        &format!("exchange = \"{exchange}\"\ndeclare = \"topic\"\nmandatory = true"),
    ));
    p.catch_up();
    p.db.exec("insert into ticks values (1, 1)").await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was returned: no queue is bound to take it"), "{err}");
    let slot = p.confirmed_flush().await;
    bind(SHARED, &exchange, &format!("{exchange}.q"), "#").await;
    p.catch_up();
    assert_eq!(
        take_all(SHARED, &format!("{exchange}.q")).await.len(),
        1,
        "the refused event after the fix"
    );
    assert_ne!(p.confirmed_flush().await, slot);
    remove(SHARED, &exchange, &[&format!("{exchange}.q")]).await;
}
