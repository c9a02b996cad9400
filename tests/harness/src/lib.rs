//! Real servers for tests, on free loopback ports, torn down on drop.
//!
//! - [`RedisCluster`]: Debian's `redis-server` nodes in cluster mode joined
//!   with `redis-cli --cluster create` (3 masters, optionally 1 replica each).
//! - [`MongoServer`]: a real `mongod` started as a one-node replica set when
//!   one is on PATH, otherwise the SecantusDB wire-compatible server
//!   (`secantusd-py`, installed by `make test-deps` into `.venv/`), which
//!   reports a replica set and supports change streams.
//!
//! Nothing here is mocked: a test that uses these talks to real servers over
//! TCP. When a server binary is missing the harness fails with the command
//! that installs it, rather than skipping silently.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod browser;
pub mod cluster;
pub mod http;
pub mod otlp;
pub mod up;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary is not installed.
    #[error(
        "{binary} not found; run `make test-deps` (or the README's test command), which installs it"
    )]
    Missing {
        /// The binary looked for.
        binary: String,
    },
    /// Start-up failed.
    #[error("{what}: {reason}")]
    Start {
        /// What was being started.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

pub(crate) fn start_err(what: &str, reason: impl std::fmt::Display) -> HarnessError {
    HarnessError::Start {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// The workspace root (where `.venv/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (and, for Redis, its cluster bus port +10000).
fn free_port(with_bus: bool) -> Result<u16, HarnessError> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| start_err("free port", e))?;
        let port = l
            .local_addr()
            .map_err(|e| start_err("free port", e))?
            .port();
        if !with_bus {
            return Ok(port);
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(start_err("free port", "no free port pair found"))
}

/// Waits until `what` accepts connections on loopback port `port`.
fn wait_port(what: &str, port: u16, timeout: Duration) -> Result<(), HarnessError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(start_err(
        what,
        format!("port {port} did not open within {timeout:?}"),
    ))
}

/// Sends one inline Redis command and returns the raw reply text.
pub fn redis_command(port: u16, command: &str) -> std::io::Result<String> {
    redis_command_as(port, None, command)
}

/// Like [`redis_command`], authenticating with `password` first.
pub fn redis_command_as(
    port: u16,
    password: Option<&str>,
    command: &str,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 16 * 1024];
    if let Some(pw) = password {
        s.write_all(format!("AUTH {pw}\r\n").as_bytes())?;
        let n = s.read(&mut buf)?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        if !reply.starts_with("+OK") {
            return Ok(reply.into_owned());
        }
    }
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster on loopback.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Proc>)>,
    server: PathBuf,
    dir: tempfile::TempDir,
    password: Option<String>,
}

/// Starts one cluster-mode node; its cluster state lives in `dir`
/// (`nodes-PORT.conf`), so a node started again on the same port rejoins
/// with its slots.
fn redis_node(
    server: &Path,
    dir: &Path,
    port: u16,
    password: Option<&str>,
) -> Result<Proc, HarnessError> {
    let auth: Vec<&str> = match password {
        Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
        None => Vec::new(),
    };
    let child = Command::new(server)
        .args(auth)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-node-timeout",
            "1000",
            // A replica always stands for election when its master dies,
            // however long since it last heard from it: on a loaded CI
            // machine a replica lagging by more than 10 node timeouts
            // (the default factor) refused to, and the cluster stayed
            // down (one CI run: `cluster_state did not become ok` in 30 s).
            "--cluster-replica-validity-factor",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| start_err("redis-server", e))?;
    Ok(Proc { child })
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each (3/0 or 3/1).
    pub fn start(masters: usize, replicas: usize) -> Result<Self, HarnessError> {
        Self::start_with(masters, replicas, None)
    }

    /// Like [`RedisCluster::start`], with every node requiring `password`
    /// (`requirepass`, and `masterauth` for replication).
    pub fn start_with_password(
        masters: usize,
        replicas: usize,
        password: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_with(masters, replicas, Some(password.to_string()))
    }

    /// Starts the cluster, again on fresh ports when a node did not come
    /// up: a port found free can be taken by another process before
    /// `redis-server` binds it (tests start servers side by side).
    fn start_with(
        masters: usize,
        replicas: usize,
        password: Option<String>,
    ) -> Result<Self, HarnessError> {
        let mut tries = 0;
        loop {
            match Self::start_once(masters, replicas, password.clone()) {
                Err(HarnessError::Start { what, reason }) if tries < 2 => {
                    tries += 1;
                    eprintln!(
                        "harness: {what}: {reason}; starting the cluster again on other ports"
                    );
                }
                other => return other,
            }
        }
    }

    fn start_once(
        masters: usize,
        replicas: usize,
        password: Option<String>,
    ) -> Result<Self, HarnessError> {
        let server = which("redis-server").ok_or(HarnessError::Missing {
            binary: "redis-server".into(),
        })?;
        let cli = which("redis-cli").ok_or(HarnessError::Missing {
            binary: "redis-cli".into(),
        })?;
        let dir = tempfile::tempdir().map_err(|e| start_err("redis dir", e))?;
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = free_port(true)?;
            nodes.push((
                port,
                Some(redis_node(&server, dir.path(), port, password.as_deref())?),
            ));
        }
        for (port, _) in &nodes {
            wait_port("redis-server", *port, Duration::from_secs(10))?;
        }
        let mut args: Vec<String> = match &password {
            Some(pw) => vec!["-a".into(), pw.clone(), "--no-auth-warning".into()],
            None => Vec::new(),
        };
        args.extend(["--cluster".into(), "create".into()]);
        args.extend(nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new(&cli)
            .args(&args)
            .output()
            .map_err(|e| start_err("redis-cli --cluster create", e))?;
        if !out.status.success() {
            return Err(start_err(
                "redis-cli --cluster create",
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
        let cluster = Self {
            nodes,
            server,
            dir,
            password,
        };
        cluster.wait_ok(Duration::from_secs(20))?;
        eprintln!(
            "harness: Redis Cluster up ({masters} masters, {replicas} replica(s) each) on ports {:?}",
            cluster.ports()
        );
        Ok(cluster)
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let all_ok = self
                .nodes
                .iter()
                .filter(|(_, p)| p.is_some())
                .all(|(port, _)| {
                    redis_command_as(*port, self.password.as_deref(), "CLUSTER INFO")
                        .is_ok_and(|r| r.contains("cluster_state:ok"))
                });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(start_err(
                    "redis cluster",
                    "cluster_state did not become ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ports of all nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// Seed URLs for `DISCOVERY_REDIS_URLS`.
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// `(host, port)` seeds.
    pub fn seeds(&self) -> Vec<(String, u16)> {
        self.ports()
            .iter()
            .map(|p| ("127.0.0.1".to_string(), *p))
            .collect()
    }

    /// Ports of the current masters.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.is_some())
            .filter(|(port, _)| {
                redis_command_as(*port, self.password.as_deref(), "ROLE")
                    .is_ok_and(|r| r.contains("master"))
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Kills the node on `port` (SIGKILL), for failover tests.
    pub fn kill(&mut self, port: u16) {
        for (p, proc_) in &mut self.nodes {
            if *p == port {
                proc_.take();
            }
        }
    }

    /// Kills every node (SIGKILL): the whole cluster is gone.
    pub fn kill_all(&mut self) {
        for (_, proc_) in &mut self.nodes {
            proc_.take();
        }
    }

    /// Starts every stopped node again on its port with its cluster state
    /// (slots, node ids; the data is gone, as after a crash without
    /// persistence) and waits for `cluster_state:ok`.
    pub fn restart_stopped(&mut self) -> Result<(), HarnessError> {
        for (port, proc_) in &mut self.nodes {
            if proc_.is_none() {
                *proc_ = Some(redis_node(
                    &self.server,
                    self.dir.path(),
                    *port,
                    self.password.as_deref(),
                )?);
            }
        }
        for (port, _) in &self.nodes {
            wait_port("redis-server", *port, Duration::from_secs(10))?;
        }
        self.wait_ok(Duration::from_secs(30))
    }
}

/// Which MongoDB-compatible server is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MongoFlavor {
    /// A real `mongod`.
    Mongod,
    /// SecantusDB (`secantusd-py`).
    Secantus,
}

/// A MongoDB-compatible server reporting a replica set.
pub struct MongoServer {
    port: u16,
    flavor: MongoFlavor,
    binary: PathBuf,
    proc_: Option<Proc>,
    dir: tempfile::TempDir,
}

fn mongo_process(
    flavor: MongoFlavor,
    binary: &Path,
    port: u16,
    dir: &Path,
) -> Result<Proc, HarnessError> {
    let mut cmd = Command::new(binary);
    match flavor {
        MongoFlavor::Mongod => cmd.args([
            "--replSet",
            "rs0",
            "--bind_ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--quiet",
            "--dbpath",
        ]),
        MongoFlavor::Secantus => cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--log-level",
            "WARNING",
            "--storage-path",
        ]),
    };
    let child = cmd
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| start_err(&binary.display().to_string(), e))?;
    Ok(Proc { child })
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl MongoServer {
    /// Starts `mongod` (one-node replica set) if on PATH, else SecantusDB.
    pub async fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| start_err("mongo dir", e))?;
        let port = free_port(false)?;
        let (flavor, binary) = if let Some(mongod) = which("mongod") {
            (MongoFlavor::Mongod, mongod)
        } else {
            let bin = std::env::var_os("DISCOVERY_SECANTUSD")
                .map(PathBuf::from)
                .or_else(|| {
                    Some(workspace_root().join(".venv/bin/secantusd-py")).filter(|p| p.is_file())
                })
                .or_else(|| which("secantusd-py"))
                .ok_or(HarnessError::Missing {
                    binary: "mongod or secantusd-py".into(),
                })?;
            (MongoFlavor::Secantus, bin)
        };
        let proc_ = mongo_process(flavor, &binary, port, dir.path())?;
        let server = Self {
            port,
            flavor,
            binary,
            proc_: Some(proc_),
            dir,
        };
        wait_port("mongo server", port, Duration::from_secs(30))?;
        if flavor == MongoFlavor::Mongod {
            server.initiate_replica_set().await?;
        }
        server.wait_writable().await?;
        eprintln!("harness: MongoDB-compatible server ({flavor:?}) up on 127.0.0.1:{port}");
        Ok(server)
    }

    async fn client(&self) -> Result<mongodb::Client, HarnessError> {
        mongodb::Client::with_uri_str(self.uri())
            .await
            .map_err(|e| start_err("mongo client", e))
    }

    async fn initiate_replica_set(&self) -> Result<(), HarnessError> {
        let c = self.client().await?;
        let cfg = mongodb::bson::doc! {"_id": "rs0", "members": [{"_id": 0, "host": format!("127.0.0.1:{}", self.port)}]};
        c.database("admin")
            .run_command(mongodb::bson::doc! {"replSetInitiate": cfg})
            .await
            .map_err(|e| start_err("replSetInitiate", e))?;
        Ok(())
    }

    async fn wait_writable(&self) -> Result<(), HarnessError> {
        let c = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hello = c
                .database("admin")
                .run_command(mongodb::bson::doc! {"hello": 1})
                .await;
            if let Ok(h) = &hello
                && h.get_bool("isWritablePrimary").unwrap_or(false)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(start_err(
                    "mongo server",
                    format!("never became writable primary: {hello:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (SIGKILL, as a crash would); its data stays on disk.
    pub fn kill(&mut self) {
        self.proc_.take();
    }

    /// Starts the server again on the same port with the same data and
    /// waits until it accepts writes.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.proc_.is_none() {
            self.proc_ = Some(mongo_process(
                self.flavor,
                &self.binary,
                self.port,
                self.dir.path(),
            )?);
        }
        wait_port("mongo server", self.port, Duration::from_secs(30))?;
        self.wait_writable().await
    }

    /// The variables every service a test starts on this server shares:
    /// the store on database `db` here, no idle pool, metrics on a free
    /// port, a 1 s shutdown grace (`Env::from_pairs(..).with_all(own)`).
    pub fn service_vars(&self, db: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DISCOVERY_STORE", "mongodb".into()),
            ("DISCOVERY_MONGO_MIN_POOL", "0".into()),
            ("DISCOVERY_METRICS_PORT", "0".into()),
            ("DISCOVERY_SHUTDOWN_GRACE", "1s".into()),
            ("DISCOVERY_MONGO_URI", self.uri()),
            ("DISCOVERY_MONGO_DATABASE", db.into()),
        ]
    }

    /// Connection string (direct connection to the one node).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Which server this is.
    pub fn flavor(&self) -> MongoFlavor {
        self.flavor
    }

    /// A database name no other test uses.
    pub fn fresh_db(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::SeqCst)
        )
    }
}

/// A test CA and a server certificate for `localhost` signed by it (EC
/// P-256, one day), made with `openssl` (Debian's package, installed by
/// `make test-deps`).
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestCerts {
    /// Writes `ca.pem`, `cert.pem` and `key.pem` (and the CA's key) in `dir`.
    pub fn make(dir: &Path) -> Result<Self, HarnessError> {
        let p = |name: &str| dir.join(name).display().to_string();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .map_err(|e| start_err("test certificates", e))?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let steps: [String; 3] = [
            format!(
                "req -x509 {ec} -days 1 -subj /CN=discovery-test-CA -keyout {} -out {}",
                p("ca.key"),
                p("ca.pem")
            ),
            format!(
                "req {ec} -subj /CN=localhost -keyout {} -out {}",
                p("key.pem"),
                p("req.csr")
            ),
            format!(
                "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 1 -extfile {} -out {}",
                p("req.csr"),
                p("ca.pem"),
                p("ca.key"),
                p("ext.cnf"),
                p("cert.pem")
            ),
        ];
        for args in steps {
            let made = Command::new("openssl")
                .args(args.split_whitespace())
                .output()
                .map_err(|_| HarnessError::Missing {
                    binary: "openssl".into(),
                })?;
            if !made.status.success() {
                return Err(start_err(
                    &format!("openssl {args}"),
                    String::from_utf8_lossy(&made.stderr),
                ));
            }
        }
        Ok(Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        })
    }
}

/// Polls `f` every 100 ms until it holds, for at most `timeout`; whether it
/// held. The one waiting loop of the tests (a condition another process or
/// replica makes true in its own time).
pub async fn eventually(timeout: std::time::Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
