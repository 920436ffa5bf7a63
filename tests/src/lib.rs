//! Test harness: private RabbitMQ and Redis (started by `deploy/services.sh`), one vhost and one
//! Redis database per test (or the Redis Cluster of `cluster`, one test at a time), the real
//! service binaries as child processes, and a raw AMQP client that only publishes and consumes,
//! as a third-party submitter would.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions},
    types::{FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
};

pub mod deploy;
pub mod fault;
pub mod observe;
pub mod rabbit_cluster;
pub mod redis_cluster;
pub mod servers;
pub mod spine;

/// Longest wait for anything in a test.
pub const WAIT: Duration = Duration::from_secs(90);

/// The private service pair all tests of a run share.
#[derive(Debug)]
pub struct Services {
    /// AMQP port.
    pub amqp_port: u16,
    /// Redis port.
    pub redis_port: u16,
    /// State directory given to `deploy/services.sh`.
    pub state_dir: PathBuf,
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shared services, started on first use unless `deploy/test.sh` already started them.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let services = Services {
            amqp_port: env_or("CHORUS_TEST_AMQP_PORT", 5690),
            redis_port: env_or("CHORUS_TEST_REDIS_PORT", 6400),
            state_dir: std::env::var("CHORUS_TEST_STATE_DIR")
                .map_or_else(|_| repo_dir().join(".chorus/test"), PathBuf::from),
        };
        if std::env::var("CHORUS_TEST_AMQP_PORT").is_err() {
            let status = services
                .script(&["start"])
                .status()
                .expect("run deploy/services.sh start");
            assert!(status.success(), "deploy/services.sh start failed");
        }
        services
    })
}

impl Services {
    /// The broker's TLS-only listener (`deploy/services.sh`: the AMQP port + 1000).
    pub fn amqps_port(&self) -> u16 {
        self.amqp_port + 1000
    }

    /// The TLS-only Redis, which requires a client certificate (`deploy/services.sh`: the Redis
    /// port + 10000).
    pub fn rediss_port(&self) -> u16 {
        self.redis_port + 10000
    }

    /// A file of the test PKI `deploy/tls.sh` made: `ca.pem`, `client.pem`, `client.key`,
    /// `other-ca.pem`, ...
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("tls").join(name)
    }

    /// A `deploy/services.sh` command aimed at this pair.
    pub fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_dir().join("deploy/services.sh"));
        command
            .args(args)
            .env("CHORUS_STATE_DIR", &self.state_dir)
            .env("CHORUS_AMQP_PORT", self.amqp_port.to_string())
            .env("CHORUS_REDIS_PORT", self.redis_port.to_string());
        command
    }
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`).
pub fn binary(name: &str) -> PathBuf {
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_dir().join("target"), PathBuf::from);
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test.sh does)",
        path.display()
    );
    path
}

/// Commands seen by `MONITOR` (see [`TestEnv::monitor_redis`]); stops when dropped.
pub struct RedisMonitor {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
    needle: String,
    redis_url: String,
    markers: AtomicU32,
}

impl RedisMonitor {
    /// Waits until every command Redis ran before this call has reached the monitor: sends a
    /// marker (`ECHO` of the needle) and waits to see it, since MONITOR reports commands in the
    /// order the server ran them.
    pub async fn catch_up(&self) {
        let marker = format!(
            "{}:caught-up:{}",
            self.needle,
            self.markers.fetch_add(1, Ordering::SeqCst)
        );
        let mut redis = redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut redis)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(&marker))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the monitor never saw {marker}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many commands seen so far are `command` (e.g. `EXISTS`).
    pub fn count(&self, command: &str) -> usize {
        let quoted = format!("\"{command}\"");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|line| {
                line.split("] ")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(&quoted))
            })
            .count()
    }

    /// Every command seen so far.
    pub fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RedisMonitor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One test's private world: a vhost, a Redis database, and the processes it started.
pub struct TestEnv {
    /// Vhost name.
    pub vhost: String,
    /// AMQP URL of the vhost.
    pub amqp_url: String,
    /// Redis URL of the database.
    pub redis_url: String,
    children: Vec<(String, Child)>,
    logs: PathBuf,
    /// Extra environment of every process this env starts (e.g. TLS files).
    pub vars: Vec<(String, String)>,
    /// Pass the URLs as files (`CHORUS_AMQP_URL_FILE`, `CHORUS_REDIS_URL_FILE`), as secrets are.
    pub url_files: bool,
}

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

impl TestEnv {
    /// Creates the vhost and clears the Redis database.
    pub async fn new(name: &str) -> Self {
        let services = services();
        let vhost = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let status = services
            .script(&["vhost", &vhost])
            .stdout(Stdio::null())
            .status()
            .expect("create vhost");
        assert!(status.success(), "cannot create vhost {vhost}");
        // Databases 1..63 (the private Redis has 64); test binaries run one after another.
        // On the test cluster (`redis_cluster::port`), database 0 of every node.
        let db = NEXT_DB.fetch_add(1, Ordering::SeqCst) % 63 + 1;
        let env = Self::with_urls(
            &vhost,
            format!(
                "amqp://guest:guest@127.0.0.1:{}/{vhost}",
                services.amqp_port
            ),
            redis_cluster::port().map_or_else(
                || format!("redis://127.0.0.1:{}/{db}", services.redis_port),
                redis_cluster::url,
            ),
            services.state_dir.join("logs"),
        );
        let mut conn = env.redis().await;
        // On the cluster (one database), tests run one at a time and each starts from empty.
        let flush = if redis_cluster::port().is_some() {
            "FLUSHALL"
        } else {
            "FLUSHDB"
        };
        redis::cmd(flush)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        env
    }

    /// An environment on given URLs; service logs go to `logs/<name>/`.
    pub fn with_urls(name: &str, amqp_url: String, redis_url: String, logs: PathBuf) -> Self {
        let logs = logs.join(name);
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            vhost: name.to_owned(),
            amqp_url,
            redis_url,
            children: Vec::new(),
            logs,
            vars: Vec::new(),
            url_files: false,
        }
    }

    /// How processes get this env's URLs: in files under its log directory when
    /// [`TestEnv::url_files`] is set, else in environment variables (never in argv).
    pub fn url_vars(&self) -> Vec<(String, String)> {
        if !self.url_files {
            return vec![
                ("CHORUS_AMQP_URL".into(), self.amqp_url.clone()),
                ("CHORUS_REDIS_URL".into(), self.redis_url.clone()),
            ];
        }
        let (amqp, redis) = self.write_url_files();
        vec![
            ("CHORUS_AMQP_URL_FILE".into(), amqp.display().to_string()),
            ("CHORUS_REDIS_URL_FILE".into(), redis.display().to_string()),
        ]
    }

    /// Writes this env's URLs to its URL files (`amqp-url`, `redis-url` under its log
    /// directory), as a secret rotation rewrites them; returns their paths.
    pub fn write_url_files(&self) -> (PathBuf, PathBuf) {
        let (amqp, redis) = (self.logs.join("amqp-url"), self.logs.join("redis-url"));
        // Written whole and renamed into place: a process started earlier may be reading it.
        for (path, url) in [(&amqp, &self.amqp_url), (&redis, &self.redis_url)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, format!("{url}\n")).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
        (amqp, redis)
    }

    /// Waits (bounded) for child `index` to exit; its exit code, `None` if it is still running.
    pub fn wait_exit(&mut self, index: usize, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.children[index].1.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a service binary with this env's URLs; returns its index for [`TestEnv::kill`].
    pub fn spawn(&mut self, bin: &str, args: &[&str]) -> usize {
        self.spawn_with(bin, args, &[])
    }

    /// [`TestEnv::spawn`] with extra environment variables (e.g. failpoints).
    pub fn spawn_with(&mut self, bin: &str, args: &[&str], vars: &[(&str, &str)]) -> usize {
        let index = self.children.len();
        let log = std::fs::File::create(self.logs.join(format!("{index}-{bin}.log"))).unwrap();
        let child = Command::new(binary(bin))
            .args(args)
            .env_remove("CHORUS_AMQP_URL")
            .env_remove("CHORUS_REDIS_URL")
            .envs(self.url_vars())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            // The services' own default filter unless the run sets one: the tests see the log
            // lines an operator would.
            .envs(
                std::env::var("RUST_LOG")
                    .ok()
                    .map(|filter| ("RUST_LOG", filter)),
            )
            .envs(vars.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((bin.to_owned(), child));
        index
    }

    /// Starts one orchestrator, `workers` workers and one synthesizer, with fast retries.
    pub fn start_system(&mut self, workers: usize) {
        self.spawn("chorus-orchestrator", &[]);
        for _ in 0..workers {
            self.spawn(
                "chorus-worker",
                &["--retry-base-delay-ms", "20", "--retry-max-delay-ms", "200"],
            );
        }
        self.spawn("chorus-synthesizer", &[]);
    }

    /// Sends SIGTERM to child `index` and waits (bounded) for its exit code.
    pub fn terminate(&mut self, index: usize, limit: Duration) -> Option<i32> {
        let (_, child) = &mut self.children[index];
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What child `index` has logged so far.
    pub fn log_of(&self, index: usize) -> String {
        let (bin, _) = &self.children[index];
        std::fs::read_to_string(self.logs.join(format!("{index}-{bin}.log"))).unwrap_or_default()
    }

    /// Resident memory of child `index`, in KiB.
    pub fn rss_kib(&self, index: usize) -> u64 {
        self.proc_status(index, "VmRSS")
    }

    /// Threads of child `index` now.
    pub fn threads(&self, index: usize) -> u64 {
        self.proc_status(index, "Threads")
    }

    /// Names of the threads of child `index` now (`/proc/<pid>/task/*/comm`).
    pub fn thread_names(&self, index: usize) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.children[index].1.id());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// The number of `field` in `/proc/<pid>/status` of child `index`.
    fn proc_status(&self, index: usize, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.children[index].1.id()))
                .unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Process id of child `index` (e.g. to find the step processes it started).
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].1.id()
    }

    /// Whether child `index` is still running.
    pub fn is_running(&mut self, index: usize) -> bool {
        self.children[index].1.try_wait().unwrap().is_none()
    }

    /// SIGKILLs child `index`.
    pub fn kill(&mut self, index: usize) {
        let (_, child) = &mut self.children[index];
        drop(child.kill());
        drop(child.wait());
    }

    /// Runs workspace binary `bin` with this env's URLs to completion (killed if it outlasts
    /// [`WAIT`]); returns what it exited with and printed.
    pub async fn run_to_exit(&self, bin: &str, args: &[&str]) -> std::process::Output {
        let output = tokio::process::Command::new(binary(bin))
            .args(args)
            .env_remove("CHORUS_AMQP_URL")
            .env_remove("CHORUS_REDIS_URL")
            .envs(self.url_vars())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(WAIT, output)
            .await
            .unwrap_or_else(|_| panic!("{bin} {args:?} did not exit in time"))
            .unwrap()
    }

    /// Runs the `chorus` CLI to completion; returns exit code and stdout.
    pub async fn cli(&self, args: &[&str]) -> (i32, String) {
        let output = self.run_to_exit("chorus", args).await;
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// A Redis connection to this env's database, or to the test cluster when the env is on
    /// it.
    pub async fn redis(&self) -> redis_cluster::TestRedis {
        if let Some(first) =
            redis_cluster::port().filter(|_| self.redis_url.starts_with("redis+cluster://"))
        {
            return redis_cluster::TestRedis::Cluster(chorus_shared::store::Clustered::new(
                redis_cluster::connect(first).await,
                WAIT,
            ));
        }
        redis_cluster::TestRedis::Single(
            redis::Client::open(self.redis_url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
    }

    /// Every command the Redis server runs from now on that mentions `needle`, as `MONITOR`
    /// shows it: for tests that count round trips.
    pub async fn monitor_redis(&self, needle: &str) -> RedisMonitor {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", services().redis_port))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"MONITOR\r\n")
            .await
            .unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stream));
        // The server says +OK once it is monitoring.
        let ok = lines.next_line().await.unwrap().unwrap_or_default();
        assert_eq!(ok, "+OK", "MONITOR refused");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = std::sync::Arc::clone(&seen);
        let wanted = needle.to_owned();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&wanted) {
                    collected.lock().unwrap().push(line);
                }
            }
        });
        RedisMonitor {
            seen,
            reader,
            needle: needle.to_owned(),
            redis_url: self.redis_url.clone(),
            markers: AtomicU32::new(0),
        }
    }

    /// A third-party AMQP client on this env's vhost.
    pub async fn client(&self) -> RawClient {
        let connection = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        RawClient {
            connection,
            channel,
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

/// A bare AMQP client: publishes and consumes, declares only its own queues.
pub struct RawClient {
    connection: Connection,
    /// Confirm-mode channel.
    pub channel: Channel,
}

impl RawClient {
    /// Waits until `queue` exists (the services declare it at start-up).
    pub async fn wait_for_queue(&self, queue: &str) {
        self.wait_for_consumers(queue, 0).await;
    }

    /// Waits until `queue` exists and has at least `consumers` consumers: processes started
    /// are not yet processes serving.
    pub async fn wait_for_consumers(&self, queue: &str, consumers: u32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self.consumers_of(queue).await;
            if found.is_some_and(|found| found >= consumers) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue} never had {consumers} consumers (now: {found:?}, None = no queue)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ready messages of `queue`, or `None` if it does not exist.
    pub async fn ready_in(&self, queue: &str) -> Option<u32> {
        self.declared(queue).await.map(|(ready, _)| ready)
    }

    /// The consumer count of `queue`, or `None` if it does not exist.
    async fn consumers_of(&self, queue: &str) -> Option<u32> {
        self.declared(queue).await.map(|(_, consumers)| consumers)
    }

    /// The ready messages and consumers of `queue`, or `None` if it does not exist.
    async fn declared(&self, queue: &str) -> Option<(u32, u32)> {
        chorus_shared::amqp::queue_counts(&self.connection, queue)
            .await
            .unwrap()
            .map(|counts| (counts.ready, counts.consumers))
    }

    /// Declares an exclusive server-named queue and consumes it without acks.
    pub async fn reply_queue(&self) -> (String, Consumer) {
        chorus_shared::topology::private_queue(&self.channel)
            .await
            .unwrap()
    }

    /// A queue bound to `chorus.events` for `pattern`, consumed without acks.
    pub async fn events(&self, pattern: &str) -> Consumer {
        let (name, consumer) = self.reply_queue().await;
        self.channel
            .queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from("chorus.events"),
                ShortString::from(pattern),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        consumer
    }

    /// Publishes `body` to `queue` through the default exchange and waits for the confirm,
    /// publishing again after a negative one (a quorum queue nacks when its leader cannot write
    /// in time, as on a loaded 2-core machine) — what any careful publisher does.
    pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        for _ in 0..5 {
            let publish = async {
                self.channel
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(queue),
                        BasicPublishOptions::default(),
                        body,
                        properties.clone(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            };
            // A broker under a disk or memory alarm blocks publishers without a word: a
            // confirm that never comes is a failure saying so, not a test hanging until CI's
            // time is up.
            let confirm = tokio::time::timeout(WAIT, publish)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "publish to {queue} not confirmed within {WAIT:?}: is the broker blocking \
                     publishers (disk or memory alarm: `rabbitmq-diagnostics alarms`)?"
                    )
                });
            if confirm.is_ack() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("publish to {queue} not confirmed after 5 tries");
    }

    /// Takes every message now in `queue` (acking them), waiting until at least `at_least` came.
    pub async fn drain(
        &self,
        queue: &str,
        at_least: usize,
    ) -> Vec<lapin::message::BasicGetMessage> {
        // A get from a queue no service has declared yet would close the client's channel.
        self.wait_for_queue(queue).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut messages = Vec::new();
        loop {
            match self
                .channel
                .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(message) => messages.push(message),
                None if messages.len() >= at_least => return messages,
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "only {} of {at_least} messages arrived in {queue}",
                        messages.len()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Next message of a consumer, or a panic after [`WAIT`].
pub async fn next_message(consumer: &mut Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no message in time")
        .expect("consumer ended")
        .expect("consumer failed")
}

/// Waits for `subtask.running` events (from a consumer of [`RawClient::events`]) of `count`
/// distinct subtasks of `task`: handlers that have started, which a fixed sleep only guesses at.
pub async fn wait_for_running(events: &mut Consumer, task: &str, count: usize) {
    let mut running = std::collections::HashSet::new();
    while running.len() < count {
        let event = msgpack_to_json(&next_message(events).await.data);
        if event["task"] == task && event["status"] == "running" {
            running.insert(event["subtask"].to_string());
        }
    }
}

/// A header of a message as text.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    chorus_shared::amqp::header_str(properties, name)
}

/// Decodes a MessagePack body into JSON for easy assertions.
pub fn msgpack_to_json(body: &[u8]) -> serde_json::Value {
    let value = rmpv::decode::read_value(&mut &body[..]).unwrap();
    serde_json::to_value(value).unwrap()
}

/// `ROLE REST...` lines of a file under `deploy/acl/`, comments and blanks left out.
pub fn acl_lines(file: &str) -> std::collections::HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo_dir().join("deploy/acl").join(file)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace().map(str::to_owned);
            (words.next().unwrap(), words.collect())
        })
        .collect()
}
