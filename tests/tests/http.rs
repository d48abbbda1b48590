//! The webhook sink against a real HTTP server of the test's own (a small HTTP/1.1 endpoint on a
//! free port whose answers a test scripts: 2xx, 5xx, 429 with Retry-After, 4xx; taken down and
//! brought back for the outage). Other methods get 405, or 401 with an Authorization header
//! other than `Bearer t0ken`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::brokers::{
    Outage, Repeats, TICK, TICKS, accounts_through, check_refuses, kill_9_and_an_outage, offline_check_refuses,
};
use crate::support::Scanned;
use crate::support::{Project, stderr};

/// A request as the endpoint got it.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    at: Instant,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

/// How the endpoint answers a request: status, and a Retry-After.
type Script = Box<dyn FnMut(&Received) -> (u16, Option<&'static str>) + Send>;

/// The endpoint.
struct Hook {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    server: Option<JoinHandle<()>>,
}

impl Hook {
    async fn start(script: Script) -> Hook {
        let mut hook = Hook {
            port: ficus_testkit::free_port(),
            received: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            server: None,
        };
        hook.listen().await;
        hook
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (received, script) = (self.received.clone(), self.script.clone());
        self.server = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let (received, script) = (received.clone(), script.clone());
                connections.spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut headers = HashMap::new();
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let method = line.split(' ').next().unwrap_or_default().to_owned();
                        loop {
                            line.clear();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let Some((name, value)) = line.trim_end().split_once(':') else {
                                break;
                            };
                            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                        }
                        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                        let mut body = vec![0; length];
                        if read.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let mut r = Received {
                            method,
                            at: Instant::now(),
                            headers,
                            body,
                            status: 0,
                        };
                        let (status, retry_after) = if r.method == "POST" {
                            (script.lock().unwrap())(&r)
                        } else if r.headers.get("authorization").is_some_and(|a| a != "Bearer t0ken") {
                            (401, None)
                        } else {
                            (405, None)
                        };
                        r.status = status;
                        received.lock().unwrap().push(r);
                        let retry = retry_after.map_or(String::new(), |v| format!("retry-after: {v}\r\n"));
                        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{retry}\r\n");
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }

    /// The POSTs answered 2xx, in order.
    fn taken(&self) -> Vec<Received> {
        self.posts().into_iter().filter(|r| r.status < 300).collect()
    }

    /// Every POST, in order.
    fn posts(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .cloned()
            .collect()
    }
}

impl Outage for Hook {
    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort(); // its connections go with it
        }
    }
    fn resume(&mut self) {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(self.listen()));
    }
}

fn hook_sink(port: u16, extra: &str) -> String {
    format!("\n[[sink]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/events\"\n{extra}\n")
}

/// The Standard Webhooks signature of a request, computed here.
fn signature(secret: &[u8], r: &Received) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{}.{}.", r.headers["webhook-id"], r.headers["webhook-timestamp"]).as_bytes());
    mac.update(&r.body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_every_event_signed_in_order_and_batches_their_routes() {
    let hook = Hook::start(Box::new(|_| (200, None))).await;
    let (_p, events) = accounts_through(
        &format!(
            "{}{}",
            hook_sink(
                hook.port,
                "name = \"signed\"\nsecret_env = \"HOOK_SECRET\"\nheaders = { authorization = \"Bearer t0ken\" }"
            ),
            hook_sink(
                hook.port,
                "name = \"batched\"\nmode = \"batch\"\nbatch_size = 2\nevents = [\"AccountOpened\", \"AccountClosed\"]"
            ),
        ),
        &[("HOOK_SECRET", SECRET)],
    )
    .await;
    let key = STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let taken = hook.taken();
    let (signed, batched): (Vec<&Received>, Vec<&Received>) =
        taken.iter().partition(|r| r.headers.contains_key("webhook-id"));
    assert_eq!(signed.len(), events.len());
    for (r, e) in signed.iter().zip(&events) {
        assert_eq!(r.headers["webhook-id"], e["id"].as_str().unwrap());
        assert_eq!(
            r.headers["webhook-signature"],
            signature(&key, r),
            "the signature verifies"
        );
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert_eq!(r.headers["content-type"], "application/json");
        for attribute in ["id", "source", "type", "subject", "time", "lsn", "txid", "specversion"] {
            assert_eq!(
                r.headers[&format!("ce-{attribute}")],
                e[attribute].as_str().unwrap(),
                "{attribute}"
            );
        }
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), e["data"]);
    }
    // Batches of at most 2, of the routed events, whole, in order.
    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "AccountOpened" || e["type"] == "AccountClosed")
        .collect();
    let mut unbatched = Vec::new();
    for r in &batched {
        assert_eq!(r.headers["content-type"], "application/cloudevents-batch+json");
        let batch: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert!(batch.len() <= 2);
        unbatched.extend(batch);
    }
    assert_eq!(unbatched.iter().collect::<Vec<_>>(), routed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_5xx_and_429_after_retry_after_and_stop_at_a_4xx() {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let hook = Hook::start(Box::new(move |r| {
        let mut n = counted.lock().unwrap();
        *n += 1;
        match *n {
            1 | 2 => (503, None),
            3 => (429, Some("2")),
            _ if r.body.windows(6).any(|w| w == b"\"n\":13") => (400, None),
            _ => (200, None),
        }
    }))
    .await;
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&hook_sink(hook.port, "mode = \"structured\""));
    p.catch_up();
    p.db.exec("insert into ticks select g, 1 from generate_series(1, 5) g")
        .await;
    p.catch_up();
    let received = hook.posts();
    let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], [503, 503, 429]);
    let after_429 = received[3].at.duration_since(received[2].at);
    assert!(
        after_429 >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured ({after_429:?})"
    );
    // Every event arrived, in order (a repeat has the same id).
    let mut ids: Vec<String> = hook
        .taken()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.dedup();
    let expected: Vec<String> = p
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);
    // A 400 is definite: ficus stops with the endpoint's answer, and the slot stays.
    let slot = p.confirmed_flush().await;
    p.db.exec("insert into ticks values (6, 13)").await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sink http: POST http://127.0.0.1:"), "{err}");
    assert!(err.contains("answered 400 Bad Request"), "{err}");
    assert!(err.contains("hint: the endpoint refused the event"), "{err}");
    assert_eq!(p.confirmed_flush().await, slot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_file_takes_what_the_endpoint_refuses_and_says_so() {
    let hook = Hook::start(Box::new(|r| {
        if r.body.windows(6).any(|w| w == b"\"n\":13") {
            (422, None)
        } else {
            (200, None)
        }
    }))
    .await;
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&hook_sink(hook.port, "dead_letter = \"dead/letters.jsonl\""));
    p.catch_up();
    p.db.exec("insert into ticks values (1, 1), (2, 13), (3, 1)").await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("DEAD LETTER"), "{err}");
    assert!(
        err.contains("warning: sink http: 1 events went to the dead-letter file"),
        "the exit summary says it: {err}"
    );
    let dead = crate::support::read_events(&p.path("dead/letters.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"]["n"], 13);
    assert_eq!(hook.taken().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_after_kill_9_and_an_endpoint_down_have_every_event() {
    let mut hook = Hook::start(Box::new(|_| (200, None))).await;
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.config(&hook_sink(
        hook.port,
        "mode = \"batch\"\nmax_in_flight = 2000\ntimeout_secs = 2",
    ));
    let received = hook.received.clone();
    let ids = move || {
        let received = received.clone();
        async move {
            let mut ids = Vec::new();
            for r in received
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.method == "POST" && r.status < 300)
            {
                let batch: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
                ids.extend(batch.into_iter().map(|e| e["id"].as_str().unwrap().to_owned()));
            }
            ids
        }
    };
    kill_9_and_an_outage(&p, &mut hook, ids, Repeats::Allowed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_webhook_fails_check_with_its_name_and_a_hint() {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    let closed = ficus_testkit::free_port();
    let hook = Hook::start(Box::new(|_| (200, None))).await;
    for (settings, expected) in [
        (
            format!(
                "url = \"http://127.0.0.1:{}/\"\n[sink.headers]\nauthorization = \"Bearer wrong\"",
                hook.port
            ),
            "refuses ficus: 401 Unauthorized",
        ),
        (
            format!("url = \"http://127.0.0.1:{closed}/\""),
            "sink http: cannot reach http://127.0.0.1:",
        ),
        (
            "url = \"http://no-such-host.invalid/\"".to_owned(),
            "sink http: cannot reach",
        ),
        (
            "url = \"http://127.0.0.1:1/\"\nsecret_env = \"FICUS_NO_SUCH_SECRET\"".to_owned(),
            "FICUS_NO_SUCH_SECRET is not set",
        ),
    ] {
        p.config(&format!("\n[[sink]]\ntype = \"http\"\n{settings}\n"));
        check_refuses(&p, &settings, expected);
    }
    // The right credentials: the endpoint is there (a HEAD it does not take is fine).
    p.config(&format!(
        "\n[[sink]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{}/\"\n[sink.headers]\nauthorization = \"Bearer t0ken\"\n",
        hook.port
    ));
    assert!(p.ficus(&["check"]).out().status.success());
    p.config("\n[[sink]]\ntype = \"http\"\nurl = \"not a url\"\n");
    offline_check_refuses(&p, "url \"not a url\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_payloads_of_text_and_bytes_reach_a_webhook_in_their_own_content_type_live_and_replayed() {
    let hook = Hook::start(Box::new(|_| (200, None))).await;
    let p = Project::new(
        "create table invoice_outbox (id uuid primary key, aggregatetype text not null, aggregateid text not null,
                                      type text not null, payload bytea not null, tenant_id int);
         create table note_outbox (id uuid primary key, aggregatetype text not null, aggregateid text not null,
                                   type text not null, payload text not null, tenant_id int);",
    )
    .await;
    p.mapping(
        "outbox.toml",
        r#"
[[outbox]]
table        = "invoice_outbox"
content_type = "application/pdf"
extensions   = { tenantid = "tenant_id" }

[[outbox]]
table        = "note_outbox"
content_type = "text/csv; charset=utf-8"
extensions   = { tenantid = "tenant_id" }
"#,
    );
    p.config(&format!(
        "{}{}\n[[sink]]\ntype = \"store\"\nname = \"history\"\narchive = true\npath = \"history/ficus.db\"\n",
        hook_sink(hook.port, "name = \"live\""),
        hook_sink(hook.port, "name = \"replayed\"\nlive = false"),
    ));
    p.catch_up();
    // Insert-then-delete, as an outbox relay's applications do; a null tenant has no extension.
    p.db.exec(
        "begin;
         insert into invoice_outbox values ('00000000-0000-4000-8000-000000000001', 'Invoice', '17', 'InvoiceIssued', '\\x255044462d312e37ff00'::bytea, 3);
         insert into note_outbox values ('00000000-0000-4000-8000-000000000002', 'Invoice', '17', 'InvoiceNoted', E'sku,qty\\nA,2\\n', null);
         delete from invoice_outbox; delete from note_outbox;
         commit;",
    )
    .await;
    p.catch_up();
    let events = p.events();
    insta::assert_snapshot!(crate::support::redacted(&events));
    let live = hook.taken();
    assert_eq!(live.len(), 2, "one event per outbox row, the deletes none");
    assert_eq!(live[0].headers["content-type"], "application/pdf");
    assert_eq!(live[0].body, b"%PDF-1.7\xff\x00", "the bytes themselves");
    assert_eq!(live[0].headers["ce-tenantid"], "3");
    assert_eq!(live[0].headers["ce-id"], "00000000-0000-4000-8000-000000000001");
    assert_eq!(live[1].headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(live[1].body, b"sku,qty\nA,2\n", "the text itself");
    assert!(!live[1].headers.contains_key("ce-tenantid"), "null: no extension");
    // Replayed from the store: the same bodies and headers (the extensions read back from it).
    p.ok(&["replay", "--to-sink", "replayed"]);
    let all = hook.taken();
    assert_eq!(all.len(), 4);
    for (a, b) in live.iter().zip(&all[2..]) {
        assert_eq!(a.body, b.body);
        let ce = |r: &Received| -> Vec<(String, String)> {
            let mut h: Vec<_> = r
                .headers
                .iter()
                .filter(|(n, _)| n.starts_with("ce-") || *n == "content-type")
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            h.sort();
            h
        };
        assert_eq!(ce(a), ce(b));
    }
    // Remapped from the archive: the same lines.
    p.config(&format!(
        "{}{}\n[[sink]]\ntype = \"store\"\nname = \"history\"\narchive = true\npath = \"history/ficus.db\"\n\n[[sink]]\ntype = \"jsonl\"\nname = \"remapped\"\nlive = false\npath = \"remapped.jsonl\"\n",
        hook_sink(hook.port, "name = \"live\""),
        hook_sink(hook.port, "name = \"replayed\"\nlive = false"),
    ));
    p.ok(&["remap", "--to-sink", "remapped"]);
    assert_eq!(
        std::fs::read_to_string(p.path("remapped.jsonl")).unwrap(),
        std::fs::read_to_string(p.path("events.jsonl")).unwrap()
    );
}
