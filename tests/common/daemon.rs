//! The real daemon binary in a child process, for the tests that drive it
//! over QUIC and signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omniroute_client::{Client, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a start (recovery included) may take before a test fails.
const START_TIMEOUT_S: u64 = 120;

/// The daemon binary on a data directory, its stdout lines fed to a channel
/// (drained all along, so the daemon never blocks on a full pipe).
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin port, unless started with `--admin off`.
    pub admin: Option<SocketAddr>,
    /// The HTTP/JSON gateway (on a free port).
    pub http: SocketAddr,
    pub cert: PathBuf,
    lines: mpsc::UnboundedReceiver<String>,
    /// Its stderr (the log), line by line.
    log: mpsc::UnboundedReceiver<String>,
    /// Stdout lines up to the listening lines.
    pub startup: Vec<String>,
}

impl Daemon {
    /// Starts the binary on `dir` (with `config`, or the embedded default)
    /// on a free QUIC port and admin address `admin` ("127.0.0.1:0", an
    /// address, or "off"), and waits until it listens.
    pub async fn start(dir: &Path, config: Option<&Path>, admin: &str) -> Daemon {
        Daemon::start_with_env(dir, config, admin, &[]).await
    }

    /// [`Daemon::start`] with environment variables `env` set.
    pub async fn start_with_env(
        dir: &Path,
        config: Option<&Path>,
        admin: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        match Daemon::try_start(dir, config, admin, env, None).await {
            Ok(daemon) => daemon,
            Err(refused) => panic!("the daemon exited while starting:\n{}", refused.log),
        }
    }

    /// [`Daemon::start_with_env`] with at most `nofile` open descriptors
    /// (soft and hard: the daemon cannot raise it).
    pub async fn start_limited(
        dir: &Path,
        config: Option<&Path>,
        admin: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        match Daemon::try_start(dir, config, admin, env, nofile).await {
            Ok(daemon) => daemon,
            Err(refused) => panic!("the daemon exited while starting:\n{}", refused.log),
        }
    }

    /// Starts the binary as [`Daemon::start_with_env`] does (with at most
    /// `nofile` descriptors, if given): the daemon once it listens, or, if
    /// it exits first (a start it refuses), its status and its stdout and
    /// log.
    pub async fn try_start(
        dir: &Path,
        config: Option<&Path>,
        admin: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Daemon, Refused> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_omniroute"));
        command.envs(env.iter().copied());
        if let Some(nofile) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's limits, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--admin", admin])
            .args(["--http", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the daemon starts");
        let mut lines = drain(child.stdout.take().unwrap(), false);
        let mut log = drain(child.stderr.take().unwrap(), true);
        let mut startup = Vec::new();
        let (mut addr, mut admin_addr, mut http) = (None, None, None);
        let wants_admin = admin != "off";
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        while addr.is_none() || http.is_none() || (wants_admin && admin_addr.is_none()) {
            let line = tokio::time::timeout_at(deadline.into(), lines.recv())
                .await
                .unwrap_or_else(|_| panic!("the daemon starts within {START_TIMEOUT_S} s"));
            let Some(line) = line else {
                let status = tokio::time::timeout_at(deadline.into(), child.wait())
                    .await
                    .unwrap_or_else(|_| panic!("the daemon exits within {START_TIMEOUT_S} s"))
                    .expect("the daemon's status");
                while let Some(line) = log.recv().await {
                    startup.push(line);
                }
                return Err(Refused {
                    status,
                    log: startup.join("\n"),
                });
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("admin on http://") {
                admin_addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("http on http://") {
                http = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            }
            startup.push(line);
        }
        Ok(Daemon {
            child,
            addr: addr.unwrap(),
            admin: admin_addr,
            http: http.unwrap(),
            cert: dir.join("cert.pem"),
            lines,
            log,
            startup,
        })
    }

    /// The admin port (the daemon was started with one).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("started with an admin port")
    }

    pub async fn client(&self, token: &str) -> Client {
        self.try_client(token).await.expect("client connects")
    }

    /// Connects and says Hello with `token`, which the daemon may refuse.
    pub async fn try_client(&self, token: &str) -> Result<Client, omniroute_client::ClientError> {
        Client::connect(
            self.addr,
            "localhost",
            Trust::CaFile(self.cert.clone()),
            token,
        )
        .await
    }

    /// Waits for a stdout line containing `text` and returns it.
    pub async fn line_with(&mut self, text: &str) -> String {
        first_with(&mut self.lines, text, "stdout").await
    }

    /// Waits for a log (stderr) line containing `text` and returns it.
    pub async fn log_line_with(&mut self, text: &str) -> String {
        first_with(&mut self.log, text, "log").await
    }

    /// What the start's recovery loaded, from its log line.
    pub async fn recovery(&mut self) -> RecoveryLine {
        let line = self.log_line_with("snapshots (oldest at LSN ").await;
        RecoveryLine::parse(&line).unwrap_or_else(|| panic!("a recovery line: {line:?}"))
    }

    /// Every log line still to come, until the daemon's stderr closes: call
    /// once it has exited.
    pub async fn log_to_end(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let wait = async {
            while let Some(line) = self.log.recv().await {
                lines.push(line);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the daemon's log ends within 30 s of its exit");
        lines
    }

    /// The admin port's /metrics page (the daemon was started with one).
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin());
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            agent
                .get(&url)
                .call()
                .and_then(|mut r| r.body_mut().read_to_string())
                .expect("/metrics answers")
        })
        .await
        .expect("the scrape")
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Sends SIGTERM and waits, at most 60 s, for the daemon to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the daemon exits within 60 s of a SIGTERM")
            .expect("the daemon's status")
    }

    /// Journal records the start replayed, from its recovery line.
    pub fn records_replayed(&self) -> u64 {
        let line = self
            .startup
            .iter()
            .find(|l| l.contains("journal records replayed"))
            .expect("a recovery line");
        let (_, rest) = line.split_once("orders recovered, ").unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// The log line of a start's recovery: "recovered DIR in N ms: K snapshots
/// (oldest at LSN L), R journal records replayed, ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryLine {
    /// Actors' snapshot files loaded.
    pub snapshots: usize,
    /// The oldest of their LSNs (0: some actor had none).
    pub oldest_lsn: u64,
    pub replayed: u64,
}

impl RecoveryLine {
    fn parse(line: &str) -> Option<RecoveryLine> {
        let (_, rest) = line.split_once(" ms: ")?;
        let (snapshots, rest) = rest.split_once(" snapshots (oldest at LSN ")?;
        let (oldest_lsn, rest) = rest.split_once("), ")?;
        let (replayed, _) = rest.split_once(" journal records replayed")?;
        Some(RecoveryLine {
            snapshots: snapshots.trim().parse().ok()?,
            oldest_lsn: oldest_lsn.trim().parse().ok()?,
            replayed: replayed.trim().parse().ok()?,
        })
    }
}

/// The value of the sample `series` (name and labels as rendered) on a
/// /metrics page, or 0 when absent.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A start the daemon gave up: how it exited, and what it printed (stdout
/// up to then, and its whole log).
pub struct Refused {
    pub status: std::process::ExitStatus,
    pub log: String,
}

/// Feeds `output`'s lines to a channel, read all along so that the daemon
/// never blocks on a full pipe; `echo` copies them to the test's stderr
/// (shown when a test fails).
fn drain(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    echo: bool,
) -> mpsc::UnboundedReceiver<String> {
    let mut output = BufReader::new(output).lines();
    let (sink, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = output.next_line().await {
            if echo {
                eprintln!("[daemon] {line}");
            }
            let _ = sink.send(line);
        }
    });
    lines
}

/// The first line from `lines` containing `text`, within 30 s.
async fn first_with(lines: &mut mpsc::UnboundedReceiver<String>, text: &str, what: &str) -> String {
    let wait = async {
        while let Some(line) = lines.recv().await {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the daemon's {what} ended before {text:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {text:?} in the {what} within 30 s"))
}

/// A web order shipped to Berlin with no hold of its own: the order most
/// tests against the real daemon submit.
pub fn web_order(id: impl Into<String>, lines: Vec<(String, u32)>) -> omniroute_protocol::Order {
    omniroute_protocol::Order {
        channel: "web".into(),
        client_order_id: id.into(),
        lat: 52.52,
        lon: 13.40,
        market: Some("DE".into()),
        method: omniroute_protocol::Method::Ship,
        hold_ttl_ms: None,
        lines,
    }
}
