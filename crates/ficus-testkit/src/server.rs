//! Throwaway broker servers for tests (NATS, Redis, a Kafka-protocol broker): a real server of
//! the local binaries on a free port, that a test can stop and start again on the same port and
//! data directory (a broker down for a while), dying with the test process.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How to start a server on a port, with a data directory.
type Launch = Box<dyn Fn(u16, &std::path::Path) -> Command + Send + Sync>;

/// A server process a test owns.
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    args: Launch,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server `command(port, dir)` makes, and waits until it accepts connections.
    pub fn start(command: impl Fn(u16, &std::path::Path) -> Command + Send + Sync + 'static) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("ficus-server-")
            .tempdir()
            .expect("a temp dir");
        let mut server = Server {
            port: free_port(),
            dir: dir.path().to_owned(),
            args: Box::new(command),
            child: None,
            _dir: dir,
        };
        server.resume();
        server
    }

    /// A NATS server with JetStream (`nats-server` on the PATH, or /usr/sbin).
    pub fn nats() -> Server {
        Server::start(|port, dir| {
            let mut cmd = Command::new(binary("nats-server"));
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir);
            cmd
        })
    }

    /// A Redis server that writes every command to its append-only file before it replies
    /// (`appendfsync always`): what it acknowledged survives it being killed.
    pub fn redis(extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::start(move |port, dir| {
            let mut cmd = Command::new(binary("redis-server"));
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir)
                .args(&extra);
            cmd
        })
    }

    /// A Kafka-protocol broker: tansu (`cargo install tansu`), keeping its topics in memory —
    /// so a test takes it down with [`Server::freeze`], not [`Server::stop`]. `extra` are more
    /// arguments (`--authentication`).
    pub fn kafka(extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::start(move |port, _dir| {
            let url = format!("tcp://127.0.0.1:{port}");
            let mut cmd = Command::new(binary("tansu"));
            cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .args(&extra);
            cmd
        })
    }

    /// Stops the server answering (SIGSTOP): connections stay open and nothing comes back, as
    /// from a broker that hangs or a network that drops everything.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGSTOP);
            }
        }
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGCONT);
            }
        }
    }

    /// A RabbitMQ node of its own (its own node name, port, database and config: `guest` may
    /// connect from 127.0.0.1); about 8 s to start.
    pub fn rabbitmq() -> Server {
        Server::start(|port, dir| {
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
            )
            .expect("rabbitmq.conf");
            // The script itself, not Debian's wrapper that switches to the rabbitmq user.
            let script = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
            let mut cmd = Command::new(if script.exists() {
                script
            } else {
                binary("rabbitmq-server")
            });
            cmd.env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
                .env("RABBITMQ_NODENAME", format!("ficus{port}@localhost"))
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", free_port().to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
                .env("RABBITMQ_PID_FILE", dir.join("pid"));
            cmd
        })
    }

    /// Kills the server and whatever it started (its process group); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, on the same port and data directory.
    pub fn resume(&mut self) {
        let mut cmd = (self.args)(self.port, &self.dir);
        let log = std::fs::File::create(self.dir.join("server.log")).expect("a log file");
        cmd.stdout(Stdio::null()).stderr(log);
        // A group of its own, so that stopping it stops what it started (RabbitMQ's script starts
        // the Erlang VM as a child).
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("the server starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A binary on the PATH, else in /usr/sbin or /usr/bin.
pub fn binary(name: &str) -> PathBuf {
    installed(name).unwrap_or_else(|| panic!("{name} is not installed (.ci/run installs it)"))
}

/// Where a binary is, if it is installed (on the PATH, or in /usr/sbin or /usr/bin).
pub fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}
