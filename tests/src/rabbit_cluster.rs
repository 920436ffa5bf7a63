//! A private RabbitMQ cluster for the cluster scenarios: `deploy/rabbitmq-cluster.sh` on the
//! ports from `CHORUS_TEST_AMQP_CLUSTER_PORT` (node N on that port + N - 1), state under
//! `.chorus/cluster-test`, stopped when dropped; and [`Relay`], a TCP relay in front of a node
//! that a test can freeze, a stand-in for a host that vanishes without closing its sockets.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::repo_dir;

/// Nodes of the test cluster.
pub const NODES: u16 = 3;

/// A running 3-node RabbitMQ cluster that only one test uses.
pub struct RabbitCluster {
    /// AMQP port of node 1.
    pub base_port: u16,
    /// State directory (one `node<N>/` each).
    pub state_dir: PathBuf,
}

impl RabbitCluster {
    /// Starts a fresh cluster (empty data) and waits until every node has joined.
    pub fn start() -> Self {
        let cluster = Self {
            base_port: std::env::var("CHORUS_TEST_AMQP_CLUSTER_PORT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5751),
            state_dir: repo_dir().join(".chorus/cluster-test"),
        };
        drop(cluster.script(&["stop"]).stderr(Stdio::null()).status());
        drop(std::fs::remove_dir_all(&cluster.state_dir));
        cluster.run(&["start"]);
        cluster
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_dir().join("deploy/rabbitmq-cluster.sh"));
        command
            .args(args)
            .env("CHORUS_CLUSTER_STATE_DIR", &self.state_dir)
            .env("CHORUS_CLUSTER_AMQP_PORT", self.base_port.to_string())
            .env("CHORUS_CLUSTER_NODES", NODES.to_string())
            .stdout(Stdio::piped());
        command
    }

    /// Runs the script (its commands bound their own waits); its output.
    fn run(&self, args: &[&str]) -> String {
        let output = self.script(args).output().unwrap();
        assert!(
            output.status.success(),
            "deploy/rabbitmq-cluster.sh {args:?} failed"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The AMQP URL of node `node` (1-based), default vhost.
    pub fn url(&self, node: u16) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.base_port + node - 1
        )
    }

    /// Every node's URL, comma-separated, starting at node `first`: what a service on the
    /// host of node `first` is given.
    pub fn urls_from(&self, first: u16) -> String {
        (0..NODES)
            .map(|offset| self.url((first - 1 + offset) % NODES + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs node `node`.
    pub fn kill(&self, node: u16) {
        self.run(&["kill", &node.to_string()]);
    }

    /// Starts node `node` again; it rejoins the cluster.
    pub fn start_node(&self, node: u16) {
        self.run(&["start-node", &node.to_string()]);
    }

    /// `rabbitmqctl -q ARGS` against node `node`; its output.
    pub fn rabbitmqctl(&self, node: u16, args: &[&str]) -> String {
        let node = node.to_string();
        let mut all = vec!["rabbitmqctl", node.as_str(), "-q"];
        all.extend_from_slice(args);
        self.run(&all)
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        drop(self.script(&["stop"]).stdout(Stdio::null()).status());
    }
}

/// A `socat` TCP relay on a free local port to one node, a process group of its own (one
/// process per relayed connection); killed when dropped.
pub struct Relay {
    /// The port the relay listens on (127.0.0.1).
    pub port: u16,
    child: Child,
}

impl Relay {
    /// Starts relaying a free local port to 127.0.0.1:`target`; waits (at most 10 s) until it
    /// accepts connections.
    pub fn start(target: u16) -> Self {
        // A port the kernel just handed out and took back: free unless another process grabs it
        // in between, which socat would report by exiting.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:127.0.0.1:{target}"))
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("socat (deploy/services.sh install puts it there)");
        let mut relay = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                relay.child.try_wait().unwrap().is_none(),
                "socat relay on port {port} exited"
            );
            assert!(
                Instant::now() < deadline,
                "socat relay on port {port} not listening after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        relay
    }

    /// The AMQP URL of the node through the relay, default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Sends `signal` to the relay's whole process group (the listener and every connection's
    /// process).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} of the socat relay failed");
    }

    /// Stops forwarding without closing anything (SIGSTOP): the connections stay open, their
    /// bytes wait in the kernel's buffers, as with a host that froze or dropped off the network.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SIGKILL ends stopped processes too.
        drop(
            Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status(),
        );
        drop(self.child.wait());
    }
}
