//! Secrets at run time, against the real services: a Redis password rotated in the URL file is
//! used from the next reconnect on, and a refused password never shows in what a service writes
//! (its log lines, at start-up and in its reconnect loops), whether the URL came in the
//! environment or in a file, and also when a rotated URL file holds a malformed URL.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chorus_tests::{services, TestEnv};
use lapin::{types::ShortString, BasicProperties};

/// A connection to the test's Redis database at `url`, as its default user.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Makes (or resets) Redis ACL user `user` with `password` only, allowed everything; `admin_url`
/// is the test's own URL.
async fn set_redis_user(admin_url: &str, user: &str, password: &str) {
    let mut admin = admin(admin_url).await;
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            user,
            "on",
            "resetpass",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}

/// `admin_url` as ACL user `user` with `password`.
fn redis_url_of(admin_url: &str, user: &str, password: &str) -> String {
    let (_, rest) = admin_url.split_once("://").unwrap();
    format!("redis://{user}:{password}@{rest}")
}

/// Waits (bounded) until child `index`'s log holds `needle` `times` times.
fn wait_for_log(env: &TestEnv, index: usize, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = env.log_of(index);
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} x{times}: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits a small range-sum task and waits for its outcome; the CLI's exit code and output.
async fn run_task(env: &TestEnv) -> (i32, String) {
    env.cli(&[
        "submit",
        "--kind",
        "range-sum",
        "--input",
        r#"{"start": 0, "end": 100, "parts": 4}"#,
        "--wait",
        "--wait-timeout-secs",
        "60",
    ])
    .await
}

#[tokio::test]
async fn a_rotated_redis_password_is_used_at_the_next_reconnect() {
    let mut env = TestEnv::new("rotation").await;
    let id = env.vhost[env.vhost.len() - 8..].to_owned();
    let user = format!("rotated-{id}");
    let admin_url = env.redis_url.clone();
    let (old, new) = (format!("Old-{id}-s3cret"), format!("New-{id}-s3cret"));
    set_redis_user(&admin_url, &user, &old).await;
    env.redis_url = redis_url_of(&admin_url, &user, &old);
    env.url_files = true;
    env.start_system(1);
    let (code, out) = run_task(&env).await;
    assert_eq!(code, 0, "{out}");

    // The secret rotates: the server first, so that the services' reconnects meet the old
    // password in the file before the new one is written.
    set_redis_user(&admin_url, &user, &new).await;
    let mut admin = admin(&admin_url).await;
    redis::cmd("CLIENT")
        .arg(&["KILL", "USER", &user])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    // A task comes while the file still holds the old password: the orchestrator cannot
    // reconnect, and says so at each try...
    let client = env.client().await;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2);
    let body = br#"{"kind": "range-sum", "id": "during-rotation", "input": {"start": 0, "end": 10, "parts": 2}}"#;
    client.publish("chorus.tasks", body, properties).await;
    wait_for_log(&env, 0, "cannot reconnect to Redis", 1);
    // ...until the file is rewritten; then the task goes through.
    env.redis_url = redis_url_of(&admin_url, &user, &new);
    env.write_url_files();
    wait_for_log(&env, 0, "reconnected to Redis", 1);
    let (code, out) = env
        .cli(&["watch", "during-rotation", "--wait-unknown-secs", "30"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    let (code, out) = run_task(&env).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4950"), "{out}");

    // The synthesizer met the broken connection too (a worker may not have: it reads Redis
    // only to check on tasks it has not seen lately).
    wait_for_log(&env, 2, "reconnected to Redis", 1);
    for index in 0..3 {
        let log = env.log_of(index);
        for password in [&old, &new] {
            assert!(!log.contains(password.as_str()), "password in a log: {log}");
        }
    }
}

#[tokio::test]
async fn a_refused_password_never_shows_in_a_services_output() {
    let services = services();
    let mut env = TestEnv::new("wrong-password").await;
    let id = env.vhost[env.vhost.len() - 8..].to_owned();
    let user = format!("refused-{id}");
    let admin_url = env.redis_url.clone();
    set_redis_user(&admin_url, &user, &format!("Right-{id}")).await;
    let (good_amqp, good_redis) = (env.amqp_url.clone(), env.redis_url.clone());
    for url_files in [false, true] {
        env.url_files = url_files;
        let password = format!("Wrong-{id}-{url_files}-s3cret");
        // RabbitMQ refuses the password: the service retries, logging each refusal.
        env.amqp_url = format!(
            "amqp://guest:{password}@127.0.0.1:{}/{}",
            services.amqp_port, env.vhost
        );
        env.redis_url.clone_from(&good_redis);
        let broker = env.spawn("chorus-orchestrator", &[]);
        let log = wait_for_log(&env, broker, "cannot connect to RabbitMQ", 2);
        assert!(env.is_running(broker), "{log}");
        assert!(!log.contains(&password), "password in the log: {log}");
        env.kill(broker);
        // Redis refuses it: the service ends at start-up with one line.
        env.amqp_url.clone_from(&good_amqp);
        env.redis_url = redis_url_of(&admin_url, &user, &password);
        let store = env.spawn("chorus-worker", &[]);
        let code = env.wait_exit(store, Duration::from_secs(60));
        let log = env.log_of(store);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("authentication failed"), "{log}");
        assert!(!log.contains(&password), "password in the log: {log}");
    }

    // At run time: the broker's URL file is rewritten to a URL that the client library quotes
    // back whole in its error (no `//`), and the broker drops the connections; the reconnect
    // loop's lines must not show the password either.
    env.url_files = true;
    env.amqp_url.clone_from(&good_amqp);
    env.redis_url.clone_from(&good_redis);
    let service = env.spawn("chorus-orchestrator", &[]);
    wait_for_log(&env, service, "connected to RabbitMQ", 1);
    let password = format!("Quoted-{id}-s3cret");
    env.amqp_url = format!(
        "amqp:guest:{password}@127.0.0.1:{}/{}",
        services.amqp_port, env.vhost
    );
    env.write_url_files();
    let close = ["rabbitmqctl", "-q", "close_all_connections", "--vhost"];
    let status = services
        .script(&[&close[..], &[env.vhost.as_str(), "rotation test"]].concat())
        .status()
        .unwrap();
    assert!(status.success());
    let log = wait_for_log(&env, service, "Invalid URL", 2);
    assert!(env.is_running(service), "{log}");
    assert!(!log.contains(&password), "password in the log: {log}");
}
