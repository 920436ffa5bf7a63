//! Least privilege (docs/security.md#least-privilege): each service and the CLI run under their
//! own RabbitMQ user and Redis ACL user with exactly the rights of `deploy/acl/`, and a task
//! with dependencies, retries, a child task and a cancel still runs to its outcome; a worker's
//! user can neither submit nor cancel, nor run commands such as FLUSHALL, nor write a task's
//! state; a submitter's user can submit and cancel through `chorus.submit` only, never publish
//! results or subtasks.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, process::Stdio, time::Duration};

use chorus_tests::{acl_lines, header, services, TestEnv};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Confirmation, Connection, ConnectionProperties,
};
use serde_json::{json, Value};

/// The roles of `deploy/acl/`, in its order.
const ROLES: [&str; 4] = ["orchestrator", "worker", "synthesizer", "cli"];

/// The users of one test: RabbitMQ users and Redis ACL users named `<vhost>-<role>`, removed
/// when dropped (both servers keep users outside vhosts and databases).
struct Users {
    prefix: String,
    redis_admin_url: String,
}

impl Users {
    /// Creates every role's users with the rights `deploy/acl/` documents.
    async fn create(env: &TestEnv) -> Self {
        let users = Self {
            prefix: env.vhost.clone(),
            redis_admin_url: env.redis_url.clone(),
        };
        let permissions = acl_lines("rabbitmq.permissions");
        let redis_rules = acl_lines("redis.acl");
        let mut admin = env.redis().await;
        for role in ROLES {
            let user = users.name(role);
            rabbitmqctl(&["add_user", &user, &password(role)]);
            let patterns = &permissions[role];
            assert_eq!(patterns.len(), 3, "{role}: configure, write, read");
            let mut args = vec!["set_permissions", "-p", env.vhost.as_str(), user.as_str()];
            args.extend(patterns.iter().map(String::as_str));
            rabbitmqctl(&args);
            let mut setuser = redis::cmd("ACL");
            setuser
                .arg("SETUSER")
                .arg(&user)
                .arg("reset")
                .arg("on")
                .arg(format!(">{}", password(role)));
            for rule in &redis_rules[role] {
                setuser.arg(rule);
            }
            setuser.query_async::<()>(&mut admin).await.unwrap();
        }
        users
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// `role`'s AMQP and Redis URLs on `env`'s vhost and database.
    fn urls(&self, env: &TestEnv, role: &str) -> (String, String) {
        let services = services();
        let user = self.name(role);
        let db = env.redis_url.rsplit('/').next().unwrap();
        (
            format!(
                "amqp://{user}:{}@127.0.0.1:{}/{}",
                password(role),
                services.amqp_port,
                env.vhost
            ),
            format!(
                "redis://{user}:{}@127.0.0.1:{}/{db}",
                password(role),
                services.redis_port
            ),
        )
    }

    /// Commands Redis refused this test's users, as `ACL LOG` lists them: `(user, object)`.
    async fn refused(&self) -> Vec<(String, String)> {
        let mut admin = redis::Client::open(self.redis_admin_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .arg(1000)
            .query_async(&mut admin)
            .await
            .unwrap();
        let text = |entry: &HashMap<String, redis::Value>, field: &str| {
            redis::from_redis_value_ref::<String>(&entry[field]).unwrap()
        };
        entries
            .iter()
            .filter(|entry| text(entry, "username").starts_with(&self.prefix))
            .map(|entry| (text(entry, "username"), text(entry, "object")))
            .collect()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for role in ROLES {
            let user = self.name(role);
            drop(
                services()
                    .script(&["rabbitmqctl", "-q", "delete_user", &user])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status(),
            );
            if let Ok(mut admin) = redis::Client::open(self.redis_admin_url.as_str())
                .and_then(|client| client.get_connection())
            {
                drop(redis::cmd("ACL").arg("DELUSER").arg(&user).exec(&mut admin));
            }
        }
    }
}

fn password(role: &str) -> String {
    format!("pw-{role}-secret")
}

fn rabbitmqctl(args: &[&str]) {
    let mut full = vec!["rabbitmqctl", "-q"];
    full.extend_from_slice(args);
    let output = services().script(&full).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the `chorus` CLI as the `cli` role; returns its exit code and stdout.
/// What it wrote to stderr goes to the test's output, for a failure's story.
async fn cli(cli_env: &TestEnv, args: &[&str]) -> (i32, String) {
    let output = cli_env.run_to_exit("chorus", args).await;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Waits for the stored outcome of `id` through `chorus result`, as the `cli` role.
async fn outcome(cli_env: &TestEnv, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + chorus_tests::WAIT;
    loop {
        let (code, out) = cli(cli_env, &["result", id]).await;
        if code != 4 {
            return serde_json::from_str(&out).unwrap_or_else(|_| panic!("{code}: {out}"));
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_runs_under_its_own_restricted_users() {
    let mut env = TestEnv::new("leastpriv").await;
    let users = Users::create(&env).await;
    let mut synthesizer = 0;
    // A rate limit, so that its token script runs under the worker's Redis user.
    let worker_args = [
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        "--rate-limit",
        "default=1000",
    ];
    for role in ["orchestrator", "worker", "synthesizer"] {
        let (amqp, redis) = users.urls(&env, role);
        let mut args = vec![];
        if role == "synthesizer" {
            // A quick sweeper, so that it finds the long task lp-2 stuck, leaves it alone while
            // the worker holds its subtasks, and repairs it once they are lost (republished)
            // under the synthesizer's users — reading chorus.dead and the delay queues included.
            args.extend(["--sweep-interval-ms", "300", "--stuck-after-ms", "1500"]);
        }
        if role == "worker" {
            args.extend(worker_args);
        }
        let spawned = env.spawn_with(
            &format!("chorus-{role}"),
            &args,
            &[("CHORUS_AMQP_URL", &amqp), ("CHORUS_REDIS_URL", &redis)],
        );
        if role == "synthesizer" {
            synthesizer = spawned;
        }
    }
    // The CLI's user may not declare the queues: it needs the services to have.
    let client = env.client().await;
    for queue in [
        "chorus.tasks",
        "chorus.subtasks",
        "chorus.results",
        "chorus.control",
    ] {
        client.wait_for_consumers(queue, 1).await;
    }
    let (amqp, redis) = users.urls(&env, "cli");
    let logs = services().state_dir.join("logs");
    let cli_env = TestEnv::with_urls(&format!("{}-cli", env.vhost), amqp, redis, logs);

    // Dependencies, a retry of every slice, and a child task (published by a service to
    // chorus.tasks), through the CLI's submit and wait.
    let input = json!({"start": 0, "end": 100, "parts": 4, "after": [[3, 0], [3, 1]], "fail_attempts": 1, "children": [2]});
    let (code, out) = cli(
        &cli_env,
        &[
            "submit",
            "--kind",
            "range-sum",
            "--id",
            "lp-1",
            "--input",
            &input.to_string(),
            "--wait",
        ],
    )
    .await;
    let done: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{code}: {out}"));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["sum"], (0..100).sum::<i64>(), "{done}");

    // A cancel from the CLI's user is served.
    let slow = json!({"start": 0, "end": 10, "parts": 2, "delay_ms": 20_000});
    let (code, out) = cli(
        &cli_env,
        &[
            "submit",
            "--kind",
            "range-sum",
            "--id",
            "lp-2",
            "--input",
            &slow.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Once claimed (a cancel of a task Redis does not know yet is kept for its claim, exit 4), the
    // CLI's user reads the running task's plan and results for `chorus graph`.
    let mut graph = (4, String::new());
    for _ in 0..100 {
        graph = cli(&cli_env, &["graph", "lp-2", "--format", "json"]).await;
        if graph.0 != 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(graph.0, 0, "{}", graph.1);
    // Its subtasks run 20 s: the worker marks the task held under its Redis user, and the
    // sweeper leaves it alone.
    wait_for_line(
        &env,
        synthesizer,
        "stuck task left alone: a worker holds its subtasks",
    )
    .await;
    // Killed, the worker gives them back; purged, they are lost for real: once the worker's mark
    // lapses, the sweeper publishes them again.
    env.kill(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while client.ready_in("chorus.subtasks").await != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killed worker's subtasks never came back to chorus.subtasks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .channel
        .queue_purge(
            ShortString::from("chorus.subtasks"),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    wait_for_line(
        &env,
        synthesizer,
        "stuck task repaired: its subtasks' messages were in no queue",
    )
    .await;
    // A worker again, for what follows.
    let (amqp, redis) = users.urls(&env, "worker");
    env.spawn_with(
        "chorus-worker",
        &worker_args,
        &[("CHORUS_AMQP_URL", &amqp), ("CHORUS_REDIS_URL", &redis)],
    );
    assert!(
        !env.log_of(synthesizer).contains("sweep failed"),
        "{}",
        env.log_of(synthesizer)
    );
    let (code, out) = cli(&cli_env, &["cancel", "lp-2"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outcome(&cli_env, "lp-2").await["status"], "cancelled");
    // The services wrote the index of recent tasks under their users, the CLI's user reads it.
    let (code, out) = cli(&cli_env, &["tasks", "--json", "--status", "cancelled"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"lp-2\""), "{out}");

    // Each service announced its kinds under its own user, and the CLI's user reads them.
    let (code, out) = cli(&cli_env, &["kinds"]).await;
    assert_eq!(code, 0, "{out}");
    let kinds: Value = serde_json::from_str(&out).unwrap();
    // Four when the killed worker's announcement has not expired yet.
    let announced = kinds["services"].as_u64().unwrap();
    assert!((3..=4).contains(&announced), "{kinds}");

    worker_cannot_submit_or_cancel(&env, &users, &cli_env).await;
    worker_cannot_run_other_redis_commands(&env, &users).await;
    worker_cannot_write_a_tasks_state(&env, &users).await;
    worker_uses_the_call_cache(&env, &users).await;
    submitter_cannot_publish_results_or_subtasks(&env, &users).await;

    // Nothing the services or the CLI needed was refused: the only refusals are the CONFIG GETs
    // of the start-up check, which the orchestrator and the synthesizer log once and go on
    // (the worker does not check), and this test's own.
    let refused = users.refused().await;
    let worker = users.name("worker");
    let tried = [
        "flushall",
        "flushdb",
        "keys",
        "config|set",
        "not-chorus",
        "eval",
    ];
    for (user, object) in &refused {
        let expected = object == "config|get"
            || (*user == worker
                && (tried.contains(&object.as_str())
                    || WORKER_READ_ONLY.contains(&object.as_str())));
        assert!(expected, "Redis refused {user} {object}: {refused:?}");
    }
    for index in [0, 2] {
        assert!(
            env.log_of(index)
                .contains("the Redis user may not run CONFIG GET"),
            "{}",
            env.log_of(index)
        );
    }
}

/// Waits (at most 20 s) for `line` in the log of child `index`.
async fn wait_for_line(env: &TestEnv, index: usize, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !env.log_of(index).contains(line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in the log of service {index}:\n{}",
            env.log_of(index)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The worker's broker user may not publish to the default exchange (so not to chorus.tasks
/// or chorus.control), and a cancel it sneaks in through the delay path is refused.
async fn worker_cannot_submit_or_cancel(env: &TestEnv, users: &Users, cli_env: &TestEnv) {
    let (amqp, _) = users.urls(env, "worker");
    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let task = json!({"kind": "range-sum", "id": "lp-forged", "input": {"start": 0, "end": 10, "parts": 1}});
    let published = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from("chorus.tasks"),
            BasicPublishOptions::default(),
            task.to_string().as_bytes(),
            BasicProperties::default().with_content_type(ShortString::from("application/json")),
        )
        .await;
    let refusal = match published {
        Ok(confirm) => confirm.await.err(),
        Err(error) => Some(error),
    }
    .expect("the broker took a task from the worker's user");
    assert!(refusal.to_string().contains("ACCESS_REFUSED"), "{refusal}");

    // A cancel as a "retry" through chorus.delay comes back to chorus.control through
    // chorus.retry: the synthesizer dead-letters it and the task runs on.
    let slow = json!({"start": 0, "end": 10, "parts": 1, "delay_ms": 1500});
    let (code, out) = cli(
        cli_env,
        &[
            "submit",
            "--kind",
            "range-sum",
            "--id",
            "lp-3",
            "--input",
            &slow.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("chorus-delay-bucket"),
        AMQPValue::LongString("100".into()),
    );
    let cancel = json!({"op": "cancel", "task": "lp-3"});
    let confirm = channel
        .basic_publish(
            ShortString::from("chorus.delay"),
            ShortString::from("chorus.control"),
            BasicPublishOptions::default(),
            cancel.to_string().as_bytes(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_headers(headers)
                .with_expiration(ShortString::from("10")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    assert_eq!(outcome(cli_env, "lp-3").await["status"], "succeeded");
    let client = env.client().await;
    let dead = client.drain("chorus.dead", 1).await;
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|message| header(&message.properties, "x-chorus-reason"))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("only when published to chorus.control")),
        "{reasons:?}"
    );
    drop(connection.close(200, ShortString::from("bye")).await);
    // The forged task never ran.
    assert_eq!(cli(cli_env, &["status", "lp-forged"]).await.0, 4);
}

/// The worker's Redis user reaches only Chorus's keys, with only the commands Chorus runs.
async fn worker_cannot_run_other_redis_commands(env: &TestEnv, users: &Users) {
    let (_, redis_url) = users.urls(env, "worker");
    let mut worker = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for command in [
        redis::cmd("FLUSHALL"),
        redis::cmd("FLUSHDB"),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("no")
            .clone(),
        redis::cmd("HGET").arg("not-chorus").arg("state").clone(),
        redis::cmd("EVAL").arg("return 1").arg(0).clone(),
    ] {
        let error = command
            .query_async::<redis::Value>(&mut worker)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("NOPERM"), "{command:?}: {error}");
    }
}

/// Keys of a task that the worker's Redis user may read but not write.
const WORKER_READ_ONLY: [&str; 3] = [
    "chorus:{lp-1}:task",
    "chorus:{lp-1}:results",
    "chorus:{lp-1}:outcome",
];

/// The worker's Redis user writes only run counts and rate-limit buckets: a task's hash, its
/// results and its outcome are read-only to it, directly or through a script it loads.
async fn worker_cannot_write_a_tasks_state(env: &TestEnv, users: &Users) {
    let (_, redis_url) = users.urls(env, "worker");
    let mut worker = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let [task, results, outcome] = WORKER_READ_ONLY;
    worker_counts_runs(env, &redis_url).await;
    // What it needs still works: reading them.
    let state: Option<String> = redis::cmd("HGET")
        .arg(task)
        .arg("state")
        .query_async(&mut worker)
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("finished"));
    for command in [
        redis::cmd("HSET")
            .arg(task)
            .arg("state")
            .arg("running")
            .clone(),
        redis::cmd("HINCRBY")
            .arg(task)
            .arg("succeeded")
            .arg(1)
            .clone(),
        redis::cmd("HSET")
            .arg(results)
            .arg("0")
            .arg("forged")
            .clone(),
        redis::cmd("HDEL").arg(results).arg("0").clone(),
        redis::cmd("PEXPIRE").arg(outcome).arg(1).clone(),
    ] {
        let error = command
            .query_async::<redis::Value>(&mut worker)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("NOPERM"), "{command:?}: {error}");
    }
    // A script it may load and run touches only the keys its user may: Redis checks each
    // command of the script against the user's key patterns.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('HSET', ARGV[1], 'state', 'running')")
        .query_async(&mut worker)
        .await
        .unwrap();
    let error = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .arg(task)
        .query_async::<redis::Value>(&mut worker)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("can't access"), "{error}");
    let error = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(task)
        .arg(task)
        .query_async::<redis::Value>(&mut worker)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
    let mut admin = env.redis().await;
    let state: String = redis::cmd("HGET")
        .arg(task)
        .arg("state")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(state, "finished");
}

/// The worker reads and writes the call cache of `llm` steps as the cache does (GET; SET with
/// PX), and its GET and SET reach nothing else it may not write.
async fn worker_uses_the_call_cache(env: &TestEnv, users: &Users) {
    let (_, redis_url) = users.urls(env, "worker");
    let mut worker = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = chorus_shared::steps::llm::cache::key("http://h/v1/chat/completions", "m", "{}");
    redis::cmd("SET")
        .arg(&key)
        .arg("answer")
        .arg("PX")
        .arg(60_000)
        .exec_async(&mut worker)
        .await
        .unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut worker)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("answer"));
    for command in [
        redis::cmd("SET")
            .arg("chorus:{lp-1}:outcome")
            .arg("x")
            .clone(),
        redis::cmd("GET").arg("not-chorus").clone(),
    ] {
        let error = command
            .query_async::<redis::Value>(&mut worker)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("NOPERM"), "{command:?}: {error}");
    }
}

/// What the worker writes: run counts of a running task's subtask (a redelivered subtask's,
/// which the end-to-end run does not reach), through the store's own scripts.
async fn worker_counts_runs(env: &TestEnv, redis_url: &str) {
    let mut admin = env.redis().await;
    redis::cmd("HSET")
        .arg("chorus:{lp-run}:task")
        .arg("state")
        .arg("running")
        .exec_async(&mut admin)
        .await
        .unwrap();
    let store = chorus_shared::store::Store::connect(redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    // A worker lacking a kind reads the other services' announcements.
    let live = chorus_shared::services::read_live(&store).await.unwrap();
    // Four when the killed worker's announcement has not expired yet.
    assert!((3..=4).contains(&live.len()), "{live:?}");
    assert_eq!(store.begin_run("lp-run", "0").await.unwrap(), Some(1));
    assert_eq!(store.begin_run("lp-run", "0").await.unwrap(), Some(2));
    store.end_run("lp-run", "0").await.unwrap();
    store.end_run("lp-run", "0").await.unwrap();
    assert_eq!(
        store.begin_run("lp-1", "0").await.unwrap(),
        None,
        "finished"
    );
    let starts: i64 = redis::cmd("EXISTS")
        .arg("chorus:{lp-run}:starts")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(starts, 0);
}

/// Publishes a result-shaped body to `exchange` with `routing_key`, mandatory, on a channel of
/// its own with a confirm: the broker's confirmation, or the error that closed the channel.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
) -> Result<Confirmation, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = json!({"task": "lp-1", "subtask": "0", "attempts": 1, "outcome": {"succeeded": []}});
    channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.to_string().as_bytes(),
            BasicProperties::default().with_content_type(ShortString::from("application/json")),
        )
        .await?
        .await
}

/// The submitter's broker user publishes to `chorus.submit` only: through it a message reaches
/// `chorus.tasks` and `chorus.control` and nothing else, and any other exchange that could lead
/// to `chorus.results` or a subtask queue refuses it.
async fn submitter_cannot_publish_results_or_subtasks(env: &TestEnv, users: &Users) {
    let (amqp, _) = users.urls(env, "cli");
    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .unwrap();
    for (exchange, queue) in [
        ("", "chorus.results"),
        ("", "chorus.subtasks"),
        ("", "chorus.subtasks.gpu"),
        ("chorus.outputs", "chorus.results"),
        ("chorus.retry", "chorus.subtasks"),
        ("chorus.delay", "chorus.subtasks"),
    ] {
        let refusal = publish(&connection, exchange, queue)
            .await
            .expect_err("the broker took a result or subtask from the submitter's user");
        assert!(
            refusal.to_string().contains("ACCESS_REFUSED"),
            "{exchange:?} -> {queue}: {refusal}"
        );
    }
    // Through chorus.submit, any other routing key reaches no queue: the broker returns it.
    for queue in ["chorus.results", "chorus.subtasks", "chorus.dead"] {
        let confirmation = publish(&connection, "chorus.submit", queue).await.unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(Some(_))),
            "{queue}: {confirmation:?}"
        );
    }
    drop(connection.close(200, ShortString::from("bye")).await);
}
