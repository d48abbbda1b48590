//! The Redis Streams sink against a real redis-server of the test's own (appendfsync always, so
//! it can be killed and started again without losing what it acknowledged).

use std::collections::HashMap;

use ficus_testkit::Server;
use redis::AsyncCommands;
use serde_json::Value;

use crate::brokers::{
    Repeats, TICK, TICKS, accounts_through, check_refuses, kill_9_and_an_outage, offline_check_refuses,
};
use crate::support::Project;

/// The entries of a stream, each as its fields, in order.
async fn entries(port: u16, key: &str) -> Vec<HashMap<String, String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

fn redis_sink(port: u16, extra: &str) -> String {
    format!("\n[[sink]]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n{extra}\n")
}

#[tokio::test]
async fn redis_streams_get_every_event_with_its_attributes_and_each_sink_its_routes() {
    let redis = Server::redis(&[]);
    let (_p, events) = accounts_through(
        &format!(
            "{}{}",
            redis_sink(redis.port, "name = \"all\"\nkey = \"shop:{aggregate}\"\nmaxlen = 1000"),
            redis_sink(
                redis.port,
                "name = \"closed\"\nkey = \"closed\"\nmode = \"structured\"\nevents = [\"AccountClosed\"]"
            ),
        ),
        &[],
    )
    .await;
    // Binary mode: each attribute a field, the data in `data`; one stream per aggregate.
    let all = entries(redis.port, "shop:public.accounts").await;
    assert_eq!(all.len(), events.len());
    for (fields, e) in all.iter().zip(&events) {
        for attribute in [
            "id",
            "source",
            "type",
            "subject",
            "time",
            "lsn",
            "txid",
            "specversion",
            "datacontenttype",
        ] {
            assert_eq!(fields[attribute], e[attribute].as_str().unwrap(), "{attribute}");
        }
        assert_eq!(fields["eventversion"], "1");
        let data: Value = serde_json::from_str(&fields["data"]).unwrap();
        assert_eq!(data, e["data"]);
    }
    // Structured, routed: the whole event, AccountClosed only.
    let closed = entries(redis.port, "closed").await;
    assert_eq!(closed.len(), 1);
    let event: Value = serde_json::from_str(&closed[0]["event"]).unwrap();
    assert_eq!(&event, events.iter().find(|e| e["type"] == "AccountClosed").unwrap());
    assert_eq!(closed[0]["id"], event["id"].as_str().unwrap());
}

#[tokio::test]
async fn redis_after_kill_9_and_a_server_down_has_every_event() {
    let mut redis = Server::redis(&[]);
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&redis_sink(
        redis.port,
        "key = \"ticks\"\nmax_in_flight = 2000\ntimeout_secs = 2",
    ));
    let port = redis.port;
    let ids = move || async move {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        // Reading 30,000 entries at once outlasts the client's default response timeout on a
        // busy machine: a longer one, and a failed read is read again, not taken for an empty
        // stream.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(30)));
        let Ok(mut conn) = client.get_multiplexed_async_connection_with_config(&config).await else {
            return vec![];
        };
        for _ in 0..10 {
            match conn.xrange_all::<_, redis::streams::StreamRangeReply>("ticks").await {
                Ok(reply) => {
                    return reply
                        .ids
                        .into_iter()
                        .map(|entry| entry.get::<String>("id").unwrap())
                        .collect();
                }
                Err(e) => {
                    eprintln!("reading the stream failed ({e}); reading again");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        vec![]
    };
    // Redis keeps repeats (a consumer drops them by id).
    kill_9_and_an_outage(&p, &mut redis, ids, Repeats::Allowed).await;
}

#[tokio::test]
async fn a_misconfigured_redis_sink_fails_check_with_its_name_and_a_hint() {
    let guarded = Server::redis(&["--requirepass", "right"]);
    let plain = Server::redis(&[]);
    {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", plain.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = conn.set("taken", "a string").await.unwrap();
    }
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    let cases = [
        (
            "redis://no-such-host.invalid:6379".to_owned(),
            "",
            "sink redis: cannot connect",
        ),
        (
            format!("redis://:wrong@127.0.0.1:{}", guarded.port),
            "",
            "hint: check the user and password",
        ),
        (
            format!("redis://127.0.0.1:{}", plain.port),
            "key = \"taken\"",
            "sink redis: key taken holds a string, not a stream",
        ),
    ];
    for (url, extra, expected) in cases {
        p.config(&format!("\n[[sink]]\ntype = \"redis\"\nurl = \"{url}\"\n{extra}\n"));
        check_refuses(&p, &url, expected);
    }
    p.config(&format!(
        "\n[[sink]]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nkey = \"{{nope}}\"\n",
        plain.port
    ));
    offline_check_refuses(&p, "{nope} is not an attribute");
}
