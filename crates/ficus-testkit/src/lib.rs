//! Throwaway Postgres clusters for tests.
//!
//! One cluster per test binary ([`Cluster::shared`]), started from the local
//! Postgres binaries with `wal_level = logical` on a free port; one database per
//! test ([`Cluster::database`]), dropped with its [`TestDb`]. The cluster dies
//! with the test process (`PR_SET_PDEATHSIG`), even on a crash.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

mod server;
pub use server::{Server, binary, installed};

/// A running throwaway cluster.
pub struct Cluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The directory of the local Postgres binaries (`PG_BIN`, else the newest under /usr/lib/postgresql).
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres server binaries under /usr/lib/postgresql (or set PG_BIN)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("no Postgres server binaries under /usr/lib/postgresql (or set PG_BIN)")
}

fn postgres_ids() -> Option<(u32, u32)> {
    // initdb refuses root: run the cluster as the `postgres` user.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The password in every test URL, which no output of ficus may show.
pub const PASSWORD: &str = "pw-Zq81-never-printed";

/// Panics when `text` shows [`PASSWORD`]; `what` says whose text it is.
pub fn assert_no_password(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    assert!(
        !text.contains(PASSWORD),
        "the source's password appears in {what}:\n{text}"
    );
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

impl Cluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| Cluster::start(&["-c", "wal_level=logical"]))
    }

    /// Starts a new cluster with extra server settings (`["-c", "wal_level=replica"]`).
    pub fn start(settings: &[&str]) -> Cluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("ficus-pg-")
            .tempdir()
            .expect("a temporary directory");
        let data_dir = dir.path().join("data");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster directory to postgres");
        }
        let status = as_postgres(Command::new(bin.join("initdb")).arg("-D").arg(&data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("initdb runs");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let tls = make_tls(dir.path(), &data_dir);
        // Members of ficus_scram log in with SCRAM; members of ficus_tls with SCRAM over TLS only.
        let hba = data_dir.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all +ficus_tls 127.0.0.1/32 scram-sha-256\nhostnossl all +ficus_tls 127.0.0.1/32 reject\nhost all +ficus_scram 127.0.0.1/32 scram-sha-256\n{rules}"
            ),
        )
        .expect("write pg_hba.conf");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid)).ok();
        }
        let mut cmd = Command::new(bin.join("postgres"));
        as_postgres(&mut cmd)
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args([
                "-c",
                "max_replication_slots=64",
                "-c",
                "max_wal_senders=64",
                "-c",
                "max_connections=200",
                "-c",
                "wal_sender_timeout=60s",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(&tls)
            .args(settings)
            .stdout(Stdio::null())
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                // Die with the test process, whatever way it ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = spawn_on_keeper_thread(cmd);
        CHILDREN.lock().unwrap().push(child);
        let cluster = Cluster {
            port,
            data_dir,
            _dir: dir,
        };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(pg_bin().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the throwaway cluster did not start: see {}",
                self.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The CA that signed the server's certificate (for `sslmode=verify-full`), when TLS is on.
    pub fn ca_path(&self) -> Option<PathBuf> {
        let ca = self._dir.path().join("ca.crt");
        ca.exists().then_some(ca)
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("postgres.log")
    }

    /// A URL for a database of this cluster. It carries [`PASSWORD`] (the cluster trusts local
    /// connections, so any password works): the tests check that it appears in no output.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database, dropped (with its slots) when the handle goes.
    pub async fn database(&'static self) -> TestDb {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the throwaway cluster");
        admin
            .execute(format!("create database {name}").as_str())
            .await
            .expect("create database");
        TestDb { cluster: self, name }
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, made with the
/// `openssl` command; the server settings that turn TLS on. Without openssl, no TLS.
fn make_tls(dir: &Path, data_dir: &Path) -> Vec<String> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ext = dir.join("san.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write san.ext");
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ficus test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    if !ok {
        return vec![];
    }
    for f in ["server.crt", "server.key"] {
        std::fs::copy(dir.join(f), data_dir.join(f)).expect("copy TLS files");
        std::fs::set_permissions(data_dir.join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod TLS files");
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(data_dir.join(f), Some(uid), Some(gid)).expect("chown TLS files");
        }
    }
    [
        "-c",
        "ssl=on",
        "-c",
        "ssl_cert_file=server.crt",
        "-c",
        "ssl_key_file=server.key",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Spawns `cmd` from a thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` fires when the process ends, not when a test thread does.
fn spawn_on_keeper_thread(mut cmd: Command) -> Child {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = cmd.spawn();
        tx.send(child).expect("send child");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("keeper thread").expect("postgres starts")
}

/// A database of a throwaway cluster, for one test.
pub struct TestDb {
    /// Its cluster.
    pub cluster: &'static Cluster,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Its URL.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A new connection to it.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .expect("connect to the test database")
    }

    /// Runs SQL statements (simple protocol, several allowed).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.connect().await;
        conn.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop synchronously with psql: Drop cannot await, and the database must go with the test.
        let sql = format!(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{0}' and pid <> pg_backend_pid();
             select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = '{0}' and not active;
             drop database if exists {0} with (force);",
            self.name
        );
        let _ = Command::new(pg_bin().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.cluster.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
                &sql,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits until `f` returns `Some`, checking every 50 ms; panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of a binary of the workspace (`target/debug/NAME` next to the test
/// executable), built first: `cargo test` builds the test targets, not the
/// workspace's binaries, and a binary left from an earlier build may be stale.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut cmd = Command::new(env!("CARGO"));
        // `--all-targets` resolves features as `cargo test` does, so the binary
        // reuses the test build's dependencies instead of building them again
        // with other features (which took minutes on 2 cores).
        cmd.args(["build", "--quiet", "--workspace", "--all-targets"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push(name.to_owned());
    }
    let bin = dir.join(name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}
