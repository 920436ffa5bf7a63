//! Fault-injection harness: a private RabbitMQ + Redis pair per test, which the test may stop,
//! kill, pause and restart; and the oracle that classifies every task and subtask after a run.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use chorus_shared::kinds::range_sum::{slice_bounds, sum_of_range};
use futures::StreamExt;
use lapin::{types::ShortString, BasicProperties, Consumer};
use serde_json::{json, Value};

use crate::{msgpack_to_json, repo_dir, RawClient, TestEnv};

static NEXT_CLUSTER: AtomicU16 = AtomicU16::new(0);

/// A private RabbitMQ + Redis pair that only one test uses.
pub struct Cluster {
    /// AMQP port.
    pub amqp_port: u16,
    /// Redis port.
    pub redis_port: u16,
    /// State directory (data, logs).
    pub state_dir: PathBuf,
}

impl Cluster {
    /// Starts a fresh pair (empty data) for test `name`.
    pub fn start(name: &str) -> Self {
        let k = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        let base: u16 = std::env::var("CHORUS_FAULT_PORT_BASE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5800);
        let cluster = Self {
            amqp_port: base + 10 * k,
            redis_port: base + 900 + k,
            state_dir: repo_dir().join(".chorus/fault").join(name),
        };
        drop(std::fs::remove_dir_all(&cluster.state_dir));
        cluster.run(&["start"]);
        cluster
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_dir().join("deploy/services.sh"));
        command
            .args(args)
            .env("CHORUS_STATE_DIR", &self.state_dir)
            .env("CHORUS_AMQP_PORT", self.amqp_port.to_string())
            .env("CHORUS_REDIS_PORT", self.redis_port.to_string())
            .stdout(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) {
        let status = self.script(args).status().unwrap();
        assert!(status.success(), "deploy/services.sh {args:?} failed");
    }

    /// Starts whatever of the pair is not running.
    pub fn start_missing(&self) {
        self.run(&["start"]);
    }

    /// Stops the RabbitMQ node gracefully.
    pub fn stop_rabbitmq(&self) {
        self.run(&["rabbitmqctl", "shutdown"]);
    }

    /// Runs `rabbitmqctl` against the node.
    pub fn rabbitmqctl(&self, args: &[&str]) {
        let mut all = vec!["rabbitmqctl"];
        all.extend_from_slice(args);
        self.run(&all);
    }

    /// SIGKILLs the RabbitMQ node.
    pub fn kill_rabbitmq(&self) {
        self.run(&["kill-rabbitmq"]);
    }

    /// Stops Redis gracefully (SIGTERM-like `SHUTDOWN`, which writes the AOF).
    pub fn stop_redis(&self) {
        // redis-cli reports the dropped connection of a successful SHUTDOWN as an error.
        let _ = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string(), "shutdown"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.redis_port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "redis did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs Redis.
    pub fn kill_redis(&self) {
        self.run(&["kill-redis"]);
    }

    fn redis_pid(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("redis/redis.pid"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Freezes Redis (SIGSTOP): connections stay open, nothing answers.
    pub fn pause_redis(&self) {
        assert!(Command::new("kill")
            .args(["-STOP", &self.redis_pid()])
            .status()
            .unwrap()
            .success());
    }

    /// Thaws Redis (SIGCONT).
    pub fn resume_redis(&self) {
        assert!(Command::new("kill")
            .args(["-CONT", &self.redis_pid()])
            .status()
            .unwrap()
            .success());
    }

    /// Declares Chorus's topology, then restarts the node gracefully. RabbitMQ 3.10 keeps the
    /// names of quorum queues in a table it saves lazily: a node SIGKILLed soon after a queue
    /// was declared forgets that queue's replica, which then never gets a leader again. A
    /// graceful stop saves the table (one under load was seen to miss a queue too), so the
    /// scenarios that restart the node start with it.
    pub async fn prepare_for_broker_restarts(&self) {
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port);
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        chorus_shared::topology::declare(&channel, Duration::from_secs(60))
            .await
            .unwrap();
        drop(
            connection
                .close(200, lapin::types::ShortString::from("ok"))
                .await,
        );
        self.stop_rabbitmq();
        self.start_missing();
    }

    /// A test environment on this pair (default vhost, database 0).
    pub async fn env(&self, name: &str) -> TestEnv {
        TestEnv::with_urls(
            name,
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port),
            format!("redis://127.0.0.1:{}/0", self.redis_port),
            self.state_dir.join("logs"),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Resume a paused Redis first, or it could not be stopped.
        drop(
            Command::new("kill")
                .args(["-CONT", &self.redis_pid()])
                .status(),
        );
        drop(self.script(&["stop"]).status());
    }
}

/// A `range-sum` task of the run, with what a fault-free run gives for it.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Task id.
    pub id: String,
    /// Range start.
    pub start: i64,
    /// Range end.
    pub end: i64,
    /// Subtasks.
    pub parts: u32,
    /// Poisoned subtask indices.
    pub poison: Vec<u32>,
    /// Sleep per attempt.
    pub delay_ms: u64,
    /// More `range-sum` input (dependencies, drafts, ...) that leaves the expected outcome as
    /// it is; `Value::Null` for none.
    pub shape: Value,
    /// More options (`max_concurrency`, `max_rounds`, ...); `Value::Null` for none.
    pub options: Value,
}

impl Planned {
    /// The request body.
    pub fn request(&self) -> Value {
        let mut input = json!({"start": self.start, "end": self.end, "parts": self.parts, "poison": self.poison, "delay_ms": self.delay_ms});
        let mut options = json!({"max_attempts": 2, "on_failure": "continue"});
        for (target, extra) in [(&mut input, &self.shape), (&mut options, &self.options)] {
            if let (Some(target), Some(extra)) = (target.as_object_mut(), extra.as_object()) {
                target.extend(extra.clone());
            }
        }
        json!({"kind": "range-sum", "id": self.id, "input": input, "options": options})
    }

    /// The outcome a fault-free run gives: status, sum and counters.
    pub fn expected(&self) -> (String, i64, u64, u64) {
        let poisoned: i128 = self
            .poison
            .iter()
            .map(|&i| {
                let (a, b) = slice_bounds(self.start, self.end, self.parts, i);
                sum_of_range(a, b)
            })
            .sum();
        let sum = i64::try_from(sum_of_range(self.start, self.end) - poisoned).unwrap();
        let failed = self.poison.len() as u64;
        let succeeded = u64::from(self.parts) - failed;
        let status = if failed == 0 {
            "succeeded"
        } else if succeeded == 0 {
            "failed"
        } else {
            "partial"
        };
        (status.to_owned(), sum, succeeded, failed)
    }
}

/// The oracle's verdict on a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Tasks submitted.
    pub tasks: u64,
    /// Subtasks planned.
    pub subtasks: u64,
    /// Subtasks in no outcome (neither succeeded nor failed in it).
    pub lost: u64,
    /// Subtasks counted more than once in an outcome.
    pub duplicate_contributions: u64,
    /// Tasks without an outcome by the deadline.
    pub stuck: u64,
    /// Tasks whose outcome differs from the fault-free one.
    pub wrong: u64,
    /// Tasks whose submitter received more than one distinct outcome.
    pub conflicting_outcomes: u64,
    /// Results that reached the synthesizer again (duplicate executions or redeliveries).
    pub duplicate_executions: u64,
}

impl Report {
    /// Whether every correctness count is zero.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicate_contributions == 0
            && self.stuck == 0
            && self.wrong == 0
            && self.conflicting_outcomes == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tasks, {} subtasks: lost {}, duplicate contributions {}, stuck {}, wrong {}, conflicting outcomes {}; duplicate executions {}",
            self.tasks,
            self.subtasks,
            self.lost,
            self.duplicate_contributions,
            self.stuck,
            self.wrong,
            self.conflicting_outcomes,
            self.duplicate_executions
        )
    }
}

/// Outcomes received on a reply queue, and how many replies contradicted an earlier one.
#[derive(Debug, Default)]
pub struct Replies {
    /// First outcome per task id.
    pub outcomes: HashMap<String, Value>,
    /// Replies per task id (more than one is allowed if identical).
    pub counts: HashMap<String, u64>,
    /// Replies that differed from the first one for their task.
    pub conflicting: u64,
}

/// Collects outcomes from a reply queue until `expected` tasks have one or `deadline` passes,
/// then looks a little longer for late duplicates.
pub async fn collect_replies(
    replies: &mut Consumer,
    expected: usize,
    deadline: Duration,
) -> Replies {
    let mut collected = Replies::default();
    let until = tokio::time::Instant::now() + deadline;
    let take = |delivery: lapin::message::Delivery, collected: &mut Replies| {
        let outcome = msgpack_to_json(&delivery.data);
        let id = outcome["id"].as_str().unwrap().to_owned();
        *collected.counts.entry(id.clone()).or_insert(0) += 1;
        match collected.outcomes.get(&id) {
            Some(earlier) if *earlier != outcome => collected.conflicting += 1,
            Some(_) => {}
            None => {
                collected.outcomes.insert(id, outcome);
            }
        }
    };
    while collected.outcomes.len() < expected {
        let Ok(next) = tokio::time::timeout_at(until, replies.next()).await else {
            break;
        };
        take(
            next.expect("reply consumer ended")
                .expect("reply consumer failed"),
            &mut collected,
        );
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        take(delivery, &mut collected);
    }
    collected
}

/// Reads the stored outcome of every task from Redis, polling until all are there or
/// `deadline` passes (for runs where the broker restarts and reply queues go with it).
pub async fn collect_stored(
    env: &TestEnv,
    tasks: &[Planned],
    deadline: Duration,
) -> HashMap<String, Value> {
    let store = chorus_shared::store::Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + deadline;
    let mut outcomes = HashMap::new();
    loop {
        for task in tasks {
            if outcomes.contains_key(&task.id) {
                continue;
            }
            if let Ok(Some(outcome)) = store.outcome(&task.id).await {
                outcomes.insert(task.id.clone(), serde_json::to_value(&outcome).unwrap());
            }
        }
        if outcomes.len() == tasks.len() || tokio::time::Instant::now() >= until {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints a figure and appends it to `.chorus/fault/report.txt`, which `deploy/test.sh` shows
/// at the end of a run (test output is otherwise captured).
pub fn note(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let dir = repo_dir().join(".chorus/fault");
    drop(std::fs::create_dir_all(&dir));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("report.txt"))
    {
        drop(writeln!(file, "{line}"));
    }
}

/// Subtasks of `run` settled (succeeded or failed), as Redis counts them.
pub async fn settled(redis: &mut crate::redis_cluster::TestRedis, run: &[Planned]) -> u64 {
    let mut total = 0;
    for task in run {
        let counts: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(format!("chorus:{{{}}}:task", task.id))
            .arg("succeeded")
            .arg("failed")
            .query_async(redis)
            .await
            .unwrap_or_default();
        total += counts.into_iter().flatten().sum::<u64>();
    }
    total
}

/// Waits (at most two minutes, the fault scenarios' bound) until at least `at_least` subtasks
/// of `run` are settled, as Redis counts them.
pub async fn wait_for_progress(env: &TestEnv, run: &[Planned], at_least: u64) {
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let total = settled(&mut redis, run).await;
        if total >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress: {total} of {at_least} subtasks settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Classifies every task and subtask of a run against the fault-free expectation.
pub async fn check(
    env: &TestEnv,
    tasks: &[Planned],
    outcomes: &HashMap<String, Value>,
    conflicting: u64,
) -> Report {
    let mut report = Report {
        tasks: tasks.len() as u64,
        conflicting_outcomes: conflicting,
        ..Report::default()
    };
    let mut redis = env.redis().await;
    for task in tasks {
        report.subtasks += u64::from(task.parts);
        let duplicates: Option<u64> = redis::cmd("HGET")
            .arg(format!("chorus:{{{}}}:task", task.id))
            .arg("duplicates")
            .query_async(&mut redis)
            .await
            .unwrap();
        report.duplicate_executions += duplicates.unwrap_or(0);
        let Some(outcome) = outcomes.get(&task.id) else {
            eprintln!("stuck: no outcome for {}", task.id);
            report.stuck += 1;
            continue;
        };
        let (status, sum, succeeded, failed) = task.expected();
        let got_succeeded = outcome["stats"]["succeeded"].as_u64().unwrap_or(0);
        let got_failed = outcome["stats"]["failed"].as_u64().unwrap_or(0);
        let parts_in_output = outcome["output"]["parts"].as_u64().unwrap_or(0);
        let accounted = got_succeeded + got_failed;
        report.lost += u64::from(task.parts).saturating_sub(accounted);
        report.duplicate_contributions += accounted.saturating_sub(u64::from(task.parts))
            + parts_in_output.saturating_sub(got_succeeded);
        let right = outcome["status"] == status.as_str()
            && got_succeeded == succeeded
            && got_failed == failed
            && (status == "failed"
                || (outcome["output"]["sum"] == sum && parts_in_output == succeeded));
        if !right {
            eprintln!(
                "wrong outcome for {}: {outcome}; expected {status} sum {sum}",
                task.id
            );
            report.wrong += 1;
        }
    }
    report
}

// What the fault scenarios (tests/tests/faults*.rs) share: their tasks, submitting them,
// waiting for the topology and for a state, the verdict.

/// Longest wait of a fault scenario for its outcomes (and for a state it waits on).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `value` as MessagePack, as a task request is published.
pub fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// `count` `range-sum` tasks with ids `<prefix>-<i>`, `parts` subtasks of `delay_ms` each.
pub fn tasks(prefix: &str, count: usize, parts: u32, delay_ms: u64) -> Vec<Planned> {
    (0..count)
        .map(|i| {
            let i64_i = i as i64;
            Planned {
                id: format!("{prefix}-{i}"),
                start: -1000 * i64_i,
                end: 100_000 + 7919 * i64_i,
                parts,
                // Every third task has a poisoned subtask, so `partial` outcomes are checked too.
                poison: if i % 3 == 2 { vec![1] } else { vec![] },
                delay_ms,
                shape: Value::Null,
                options: Value::Null,
            }
        })
        .collect()
}

/// Publishes `tasks` to `chorus.tasks`, replies to `reply_to`.
pub async fn submit(client: &RawClient, tasks: &[Planned], reply_to: &str) {
    submit_as(client, tasks, reply_to, None).await;
}

/// Submits with a given correlation id (else the outcome carries the task id).
pub async fn submit_as(
    client: &RawClient,
    tasks: &[Planned],
    reply_to: &str,
    correlation_id: Option<&str>,
) {
    for task in tasks {
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to));
        if let Some(correlation_id) = correlation_id {
            properties = properties.with_correlation_id(ShortString::from(correlation_id));
        }
        client
            .publish("chorus.tasks", &msgpack(&task.request()), properties)
            .await;
    }
}

/// Waits until every service has declared its queues, and a little more: RabbitMQ 3.10 may not
/// restart a quorum queue killed within a fraction of a second of its creation (its Ra server
/// stays leaderless), which is a broker limitation, not what these scenarios test.
pub async fn wait_for_topology(client: &RawClient) {
    for queue in [
        "chorus.tasks",
        "chorus.subtasks",
        "chorus.results",
        "chorus.dead",
    ] {
        client.wait_for_queue(queue).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Waits until the task hash `key` is in `state`.
pub async fn wait_for_state(env: &TestEnv, key: &str, state: &str) {
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let current: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("state")
            .query_async(&mut redis)
            .await
            .unwrap();
        if current.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached state {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Notes the oracle's `report` of `scenario` (see [`note`]) and asserts it is clean.
pub fn assert_clean(scenario: &str, report: &Report) {
    note(&format!("[{scenario}] {report}"));
    assert!(report.is_clean(), "[{scenario}] {report}");
}

/// Plays supervisor until the first reply: restarts `process` (started as `program`) each time
/// it dies, at most ten times. Returns the decoded reply and how many times it died.
pub async fn supervise_until_reply(
    env: &mut TestEnv,
    replies: &mut lapin::Consumer,
    mut process: usize,
    program: (&str, &[&str], &[(&str, &str)]),
) -> (Value, usize) {
    let (bin, args, vars) = program;
    let mut crashes = 0;
    loop {
        if let Ok(Some(Ok(reply))) = tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(replies),
        )
        .await
        {
            return (crate::msgpack_to_json(&reply.data), crashes);
        }
        if !env.is_running(process) {
            crashes += 1;
            assert!(crashes <= 10, "{bin} kept crashing: never given up on");
            process = env.spawn_with(bin, args, vars);
        }
    }
}

/// The scenario's environment on `cluster` and a raw client of it.
pub async fn start(cluster: &Cluster, name: &str) -> (TestEnv, RawClient) {
    let env = cluster.env(name).await;
    let client = env.client().await;
    (env, client)
}

/// A worker's flags in the scenarios: 8 subtasks at once, retries after 20 to 200 ms.
pub fn worker_args() -> [&'static str; 6] {
    [
        "--concurrency",
        "8",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
    ]
}
