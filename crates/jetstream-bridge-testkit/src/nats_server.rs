//! Private `nats-server` processes: [`NatsServer`] and [`NatsCluster`], for fault tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::Client;
use rustix::process::Signal;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::process::{self, LOOPBACK};
use crate::unique::unique_name;

const INSTALL_HINT: &str = "install it with `apt-get install nats-server` (or run \
    `bash .ci/services.sh`), or set NATS_SERVER_BIN to its path";

/// How long a start may take before the testkit gives up (ports file + first `INFO`).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`NatsServer::stop`] waits after SIGTERM before it SIGKILLs.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long [`NatsCluster::wait_ready`] waits for a replicated stream to be creatable.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(10);

/// Options for a private [`NatsServer`]; start with [`NatsServer::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct NatsServerBuilder {
    config: Option<String>,
    jetstream: bool,
    args: Vec<String>,
}

impl NatsServerBuilder {
    /// Configuration file text (users, permissions, accounts, limits …), written to the
    /// server's temp directory and passed with `-c`. The testkit's command-line flags (listen
    /// address, port, JetStream store) override the same settings in the file.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Enables JetStream with a store in the server's temp directory (default `true`).
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }

    /// One extra command-line argument, passed after the testkit's own.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits until it accepts clients.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not installed (with an install hint) or does not start; the
    /// message includes the end of the server's log.
    pub async fn spawn(self) -> NatsServer {
        let server = NatsServer::prepare(self, None);
        server.launch().await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Cluster settings of one [`NatsCluster`] node.
#[derive(Debug, Clone)]
struct ClusterNode {
    cluster_name: String,
    server_name: String,
    cluster_port: u16,
    /// Route URLs of every node (a route to itself is ignored by the server).
    routes: String,
}

/// A private `nats-server` on `127.0.0.1` (a free port), with JetStream stored in a temp
/// directory, for tests that kill, restart or reconfigure a server.
///
/// The port and the store survive [`restart`](Self::restart) and [`kill9`](Self::kill9) +
/// `restart`, so JetStream data persists across them. `Drop` SIGKILLs the process by PID and
/// reaps it, then deletes the temp directory.
///
/// The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`, else `/usr/sbin/nats-server`.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// use jetstream_bridge_testkit::NatsServer;
///
/// let server = NatsServer::spawn().await;
/// let client = server.connect().await;
/// server.kill9();
/// server.restart().await; // same port, same JetStream store
/// # drop(client);
/// # }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    dir: TempDir,
    store_dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    jetstream: bool,
    args: Vec<String>,
    cluster: Option<ClusterNode>,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Options for a private server.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder {
            config: None,
            jetstream: true,
            args: Vec::new(),
        }
    }

    /// Starts a server with JetStream and default settings.
    ///
    /// # Panics
    ///
    /// See [`NatsServerBuilder::spawn`].
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// Starts a server with JetStream and the given configuration file text.
    ///
    /// # Panics
    ///
    /// See [`NatsServerBuilder::spawn`].
    pub async fn with_config(config: impl Into<String>) -> Self {
        Self::builder().config(config).spawn().await
    }

    fn prepare(builder: NatsServerBuilder, cluster: Option<ClusterNode>) -> Self {
        let bin = process::find_binary(
            "nats-server",
            Some("NATS_SERVER_BIN"),
            &[PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
            INSTALL_HINT,
        );
        let dir = tempfile::Builder::new()
            .prefix("jb-nats-")
            .tempdir()
            .expect("cannot create a temp directory for nats-server");
        let config_path = builder.config.map(|text| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        });
        Self {
            bin,
            store_dir: dir.path().join("store"),
            log_path: dir.path().join("nats-server.log"),
            dir,
            config_path,
            jetstream: builder.jetstream,
            args: builder.args,
            cluster,
            port: 0,
            child: Mutex::new(None),
        }
    }

    /// First start, on a port chosen by the server (`-p -1`), learnt from its ports file.
    async fn launch(mut self) -> Result<Self, String> {
        let (child, port) = self.start(None).await?;
        self.port = port;
        *self.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(self)
    }

    fn command(&self, port: Option<u16>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-a")
            .arg(LOOPBACK.to_string())
            .arg("-p")
            .arg(port.map_or_else(|| "-1".to_owned(), |p| p.to_string()))
            .arg("--ports_file_dir")
            .arg(self.dir.path());
        if let Some(config) = &self.config_path {
            cmd.arg("-c").arg(config);
        }
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(&self.store_dir);
        }
        if let Some(node) = &self.cluster {
            cmd.arg("--server_name")
                .arg(&node.server_name)
                .arg("--cluster_name")
                .arg(&node.cluster_name)
                .arg("--cluster")
                .arg(format!("nats://{LOOPBACK}:{}", node.cluster_port))
                .arg("--routes")
                .arg(&node.routes);
        }
        cmd.args(&self.args);
        let (out, err) = process::log_stdio(&self.log_path);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own process group: a Ctrl-C meant for the test runner does not reach it first.
        cmd.process_group(0);
        cmd
    }

    /// Starts the process and waits until it accepts clients; returns it and its client port.
    async fn start(&self, port: Option<u16>) -> Result<(Child, u16), String> {
        let mut child = self
            .command(port)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}; {INSTALL_HINT}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let port = match port {
            Some(port) => port,
            None => loop {
                if let Some(port) = read_ports_file(self.dir.path(), child.id()) {
                    break port;
                }
                if let Some(failure) = self.check_start(&mut child, deadline) {
                    return Err(failure);
                }
                tokio::time::sleep(POLL).await;
            },
        };
        loop {
            if accepts_clients(port).await {
                return Ok((child, port));
            }
            if let Some(failure) = self.check_start(&mut child, deadline) {
                return Err(failure);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `Some(message)` when the starting child exited or the deadline passed (then it is killed).
    fn check_start(&self, child: &mut Child, deadline: Instant) -> Option<String> {
        let problem = match child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ if Instant::now() > deadline => format!("was not ready after {START_TIMEOUT:?}"),
            _ => return None,
        };
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(format!(
            "nats-server (pid {pid}) {problem}\n{}",
            process::log_tail(&self.log_path, 40)
        ))
    }

    /// `nats://127.0.0.1:<port>`.
    #[must_use]
    pub fn client_url(&self) -> String {
        format!("nats://{LOOPBACK}:{}", self.port)
    }

    /// The client port; the same after every restart.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the running process, `None` after [`kill9`](Self::kill9) or
    /// [`stop`](Self::stop).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The `-n`/`--server_name` of a cluster node, `None` for a standalone server.
    #[must_use]
    pub fn server_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.server_name.as_str())
    }

    /// The JetStream store directory (kept across restarts).
    #[must_use]
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's log file (stdout and stderr of every start, appended).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Connects a client to [`client_url`](Self::client_url).
    ///
    /// # Panics
    ///
    /// When the connection fails (e.g. the server is down or requires credentials).
    pub async fn connect(&self) -> Client {
        let url = self.client_url();
        async_nats::connect(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to private nats-server at {url}: {e}"))
    }

    /// Waits until the server accepts TCP connections and sends its `INFO` line. `spawn` and
    /// `restart` already do this.
    ///
    /// # Panics
    ///
    /// When the server is not running or not ready within 15 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if accepts_clients(self.port).await {
                return;
            }
            let running = self
                .child()
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            assert!(
                running && Instant::now() < deadline,
                "nats-server on port {} is {}\n{}",
                self.port,
                if running {
                    "not ready after 15 s"
                } else {
                    "not running"
                },
                process::log_tail(&self.log_path, 40)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs the server by PID and reaps it (simulates a crash). No-op when not running.
    /// [`restart`](Self::restart) brings it back on the same port and store.
    pub fn kill9(&self) {
        if let Some(child) = self.child().take() {
            process::kill_and_reap(child, false);
        }
    }

    /// SIGTERMs the server and waits for it to exit (SIGKILL after 10 s). No-op when not
    /// running.
    pub async fn stop(&self) {
        let child = self.child().take();
        if let Some(child) = child {
            process::terminate(child, Signal::TERM, STOP_GRACE, false).await;
        }
    }

    /// Stops the server if it runs, then starts it again on the same port with the same store
    /// and configuration, and waits until it accepts clients.
    ///
    /// # Panics
    ///
    /// When it does not come back (e.g. another process took the port meanwhile).
    pub async fn restart(&self) {
        self.stop().await;
        let (child, _) = self
            .start(Some(self.port))
            .await
            .unwrap_or_else(|e| panic!("restart on port {}: {e}", self.port));
        *self.child() = Some(child);
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            process::kill_and_reap(child, false);
        }
    }
}

/// The client port from `<dir>/<exe>_<pid>.ports` (`{"nats":["nats://127.0.0.1:<port>"],…}`),
/// once the server has written it (after it is ready).
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let path = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        })?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// One readiness probe: a TCP connect to `127.0.0.1:<port>` that receives the `INFO` line.
async fn accepts_clients(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((LOOPBACK, port)).await.ok()?;
        let mut buf = [0_u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

/// A JetStream cluster of private `nats-server` nodes on loopback ports, each with its own
/// store, a unique `server_name` and a shared unique cluster name.
///
/// Every node has routes to all nodes, so any node can be [`kill9`](NatsServer::kill9)ed and
/// [`restart`](NatsServer::restart)ed on its own (same ports, same store). `Drop` kills all.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// use jetstream_bridge_testkit::NatsCluster;
///
/// let cluster = NatsCluster::spawn(3).await; // ready: an R3 stream can be created
/// let client = cluster.connect().await;      // knows every node, fails over
/// cluster.node(1).kill9();
/// cluster.node(1).restart().await;
/// # drop(client);
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until the cluster can create a stream replicated on all of
    /// them (so a JetStream meta leader exists and every node has joined).
    ///
    /// # Panics
    ///
    /// When `size` is 0, or the cluster does not form; the message includes the nodes' logs.
    pub async fn spawn(size: usize) -> Self {
        assert!(size > 0, "a cluster needs at least one node");
        let mut last_failure = String::new();
        // Cluster ports must be known up front (every node routes to every node), so they are
        // picked free and released; retry if another process takes one before a node binds it.
        for _attempt in 0..3 {
            let name = unique_name("jbc");
            let cluster_ports = process::free_ports(size);
            let routes = cluster_ports
                .iter()
                .map(|p| format!("nats://{LOOPBACK}:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut nodes = Vec::with_capacity(size);
            for (i, cluster_port) in cluster_ports.into_iter().enumerate() {
                let node = ClusterNode {
                    cluster_name: name.clone(),
                    server_name: format!("{name}_n{i}"),
                    cluster_port,
                    routes: routes.clone(),
                };
                match NatsServer::prepare(NatsServer::builder(), Some(node))
                    .launch()
                    .await
                {
                    Ok(server) => nodes.push(server),
                    Err(e) => {
                        last_failure = format!("node {i}: {e}");
                        break;
                    }
                }
            }
            if nodes.len() == size {
                let cluster = Self { name, nodes };
                cluster.wait_ready().await;
                return cluster;
            }
        }
        panic!("NatsCluster::spawn({size}) failed 3 times; last failure: {last_failure}");
    }

    /// The cluster name (unique per cluster).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always `false`: a cluster has at least one node.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based), to [`kill9`](NatsServer::kill9), [`restart`](NatsServer::restart) or
    /// [`stop`](NatsServer::stop) it.
    ///
    /// # Panics
    ///
    /// When `i >= len()`.
    #[must_use]
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// All nodes.
    #[must_use]
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The index of the node whose `server_name` is `server_name` (e.g. a stream's leader from
    /// `info.cluster.leader`).
    #[must_use]
    pub fn node_index(&self, server_name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.server_name() == Some(server_name))
    }

    /// Client URLs of all nodes; `async_nats::connect(urls.as_slice())` accepts them.
    #[must_use]
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::client_url).collect()
    }

    /// Connects a client that knows every node (it reconnects to another when one dies).
    ///
    /// # Panics
    ///
    /// When no node accepts the connection.
    pub async fn connect(&self) -> Client {
        let urls = self.client_urls();
        async_nats::connect(urls.as_slice())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to cluster {} at {urls:?}: {e}", self.name))
    }

    /// Waits until a stream replicated on every node can be created (and deletes it again);
    /// `spawn` already does this. Useful after restarting nodes.
    ///
    /// # Panics
    ///
    /// When that does not succeed within 30 s; the message includes the nodes' logs.
    pub async fn wait_ready(&self) {
        let client = self.connect().await;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            let name = unique_name("ready");
            let config = stream::Config {
                subjects: vec![format!("{name}.>")],
                name: name.clone(),
                num_replicas: self.nodes.len(),
                storage: stream::StorageType::Memory,
                ..stream::Config::default()
            };
            match js.create_stream(config).await {
                Ok(_) => {
                    let _ = js.delete_stream(&name).await;
                    return;
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| process::log_tail(n.log_path(), 15))
            .collect();
        panic!(
            "cluster {} has no working JetStream meta group after {CLUSTER_READY_TIMEOUT:?} \
             (last error: {last_error})\n{}",
            self.name,
            logs.join("\n")
        );
    }
}
