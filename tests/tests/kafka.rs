//! The Kafka sink against a real Kafka-protocol broker (tansu, on a free port), read back by an
//! ordinary Kafka consumer (rdkafka's).

use std::collections::HashMap;
use std::time::Duration;

use ficus_testkit::Server;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::brokers::{
    Outage, Repeats, TICK, TICKS, accounts_through, check_refuses, kill_9_and_an_outage, offline_check_refuses,
};
use crate::support::Project;

/// A record as a consumer reads it.
#[derive(Debug)]
struct Record {
    key: String,
    headers: HashMap<String, String>,
    value: Vec<u8>,
}

/// Every record of a topic's partition 0, from the start, as an ordinary consumer reads them.
fn records(port: u16, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "ficus-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    if consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).is_err() {
        return vec![];
    }
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partitions).unwrap();
    let mut out = Vec::new();
    // Until the partition has nothing more for a second.
    let mut quiet = 0;
    while quiet < 4 {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(250)) else {
            quiet += 1;
            continue;
        };
        quiet = 0;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

fn kafka_sink(port: u16, extra: &str) -> String {
    format!("\n[[sink]]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gets_every_event_keyed_by_subject_with_the_binding_headers_and_each_sink_its_routes() {
    let kafka = Server::kafka(&[]);
    let (_p, events) = accounts_through(
        &format!(
            "{}{}",
            kafka_sink(kafka.port, "name = \"backbone\"\ntopic = \"shop.{aggregate}\"\ncreate_topics = true\ncompression = \"lz4\""),
            kafka_sink(
                kafka.port,
                "name = \"balances\"\ntopic = \"balances\"\nmode = \"structured\"\nevents = [\"BalanceChanged\"]\ncreate_topics = true"
            ),
        ),
        &[],
    )
    .await;
    let port = kafka.port;
    let got = tokio::task::spawn_blocking(move || records(port, "shop.public.accounts"))
        .await
        .unwrap();
    assert_eq!(got.len(), events.len(), "{got:?}");
    for (r, e) in got.iter().zip(&events) {
        assert_eq!(r.key, e["subject"].as_str().unwrap(), "the key is the subject");
        assert_eq!(r.headers["content-type"], "application/json");
        for attribute in ["id", "source", "type", "subject", "time", "lsn", "txid", "specversion"] {
            assert_eq!(
                r.headers[&format!("ce_{attribute}")],
                e[attribute].as_str().unwrap(),
                "{attribute}"
            );
        }
        assert_eq!(serde_json::from_slice::<Value>(&r.value).unwrap(), e["data"]);
    }
    let got = tokio::task::spawn_blocking(move || records(port, "balances"))
        .await
        .unwrap();
    let expected: Vec<&Value> = events.iter().filter(|e| e["type"] == "BalanceChanged").collect();
    assert_eq!(got.len(), expected.len());
    for (r, e) in got.iter().zip(expected) {
        assert_eq!(r.headers["content-type"], "application/cloudevents+json");
        assert_eq!(&serde_json::from_slice::<Value>(&r.value).unwrap(), e);
    }
}

/// tansu keeps its topics in memory: it is frozen (SIGSTOP), not killed.
struct Frozen(Server);

impl Outage for Frozen {
    fn stop(&mut self) {
        self.0.freeze();
    }
    fn resume(&mut self) {
        self.0.thaw();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_after_kill_9_and_a_broker_that_stops_answering_has_every_event() {
    let mut kafka = Frozen(Server::kafka(&[]));
    let port = kafka.0.port;
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&kafka_sink(
        port,
        "topic = \"ticks\"\ncreate_topics = true\nmax_in_flight = 2000\ntimeout_secs = 3",
    ));
    let ids = move || async move {
        tokio::task::spawn_blocking(move || {
            records(port, "ticks")
                .into_iter()
                .map(|r| r.headers.get("ce_id").cloned().unwrap_or_default())
                .collect()
        })
        .await
        .unwrap()
    };
    kill_9_and_an_outage(&p, &mut kafka, ids, Repeats::Allowed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_kafka_sink_fails_check_with_its_name_and_a_hint() {
    let kafka = Server::kafka(&[]);
    // A broker that wants SCRAM credentials (it knows no user).
    let secured = Server::kafka(&["--authentication"]);
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    let closed = ficus_testkit::free_port();
    for (settings, expected) in [
        (
            format!("brokers = \"127.0.0.1:{closed}\"\ntimeout_secs = 3"),
            "sink kafka: brokers 127.0.0.1:",
        ),
        (
            format!("brokers = \"127.0.0.1:{}\"\ntopic = \"absent\"", kafka.port),
            "sink kafka: topic absent does not exist",
        ),
        (
            format!("brokers = \"127.0.0.1:{}\"\ncompression = \"brotli\"", kafka.port),
            "compression = \"brotli\"",
        ),
        (
            format!(
                "brokers = \"127.0.0.1:{}\"\n[sink.properties]\n\"no.such.setting\" = \"1\"",
                kafka.port
            ),
            "cannot make a producer",
        ),
        (
            format!(
                "brokers = \"127.0.0.1:{}\"\ntimeout_secs = 3\n[sink.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"ada\"\n\"sasl.password\" = \"wrong\"",
                secured.port
            ),
            "refused the credentials",
        ),
    ] {
        p.config(&format!("\n[[sink]]\ntype = \"kafka\"\n{settings}\n"));
        check_refuses(&p, &settings, expected);
    }
    // A template naming an attribute events do not have is refused when the config is read.
    p.config(&format!(
        "\n[[sink]]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{}\"\ntopic = \"shop.{{kind}}\"\n",
        kafka.port
    ));
    offline_check_refuses(&p, "{kind}");
}
