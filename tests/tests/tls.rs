//! TLS and secrets against the real TLS-only listeners of `deploy/services.sh`: a task runs
//! through the three services and the CLI over `amqps://` and `rediss://` (CA files, mutual TLS,
//! a RabbitMQ user and a Redis ACL user whose URLs come from files), no password shows in any
//! output, and a server whose certificate does not verify is refused with exit code 69. On a
//! Redis Cluster that speaks TLS only (`deploy/test.sh`'s cluster step), tasks run over
//! `rediss+cluster://` with mutual TLS on every node, through a slot move.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_shared::telemetry;
use chorus_tests::{redis_cluster, services, TestEnv};

/// The TLS files of one connection (`prefix`: `AMQP` or `REDIS`): `ca` and the test's client
/// certificate, as environment variables.
fn tls_vars(prefix: &str, ca: &str) -> Vec<(String, String)> {
    let services = services();
    let file = |name: &str| services.tls_file(name).display().to_string();
    [
        ("CA", file(ca)),
        ("CERT", file("client.pem")),
        ("KEY", file("client.key")),
    ]
    .into_iter()
    .map(|(name, value)| (format!("CHORUS_{prefix}_TLS_{name}"), value))
    .collect()
}

/// A connection to database `db` of the TLS-only Redis, as the test's own client.
async fn tls_redis(db: u32, user: Option<(&str, &str)>) -> redis::aio::MultiplexedConnection {
    let services = services();
    let credentials = user.map_or(String::new(), |(name, password)| {
        format!("{name}:{password}@")
    });
    let url = format!(
        "rediss://{credentials}127.0.0.1:{}/{db}",
        services.rediss_port()
    );
    let read = |name: &str| std::fs::read(services.tls_file(name)).unwrap();
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        },
    )
    .unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn a_task_runs_over_tls_with_secrets_from_files() {
    let services = services();
    let mut env = TestEnv::new("tls").await;
    let id = &env.vhost[env.vhost.len() - 8..];
    let (user, password) = (format!("chorus-{id}"), format!("Pw-{id}-s3cret"));
    // A broker user of the test's own, with a password no default could contain.
    for args in [
        vec!["add_user", user.as_str(), password.as_str()],
        vec!["set_permissions", "-p", &env.vhost, &user, ".*", ".*", ".*"],
    ] {
        let mut all = vec!["rabbitmqctl", "-q"];
        all.extend(args);
        let status = services.script(&all).status().unwrap();
        assert!(status.success(), "rabbitmqctl {all:?}");
    }
    // A Redis ACL user on the TLS-only Redis, which also demands a client certificate.
    let mut admin = tls_redis(1, None).await;
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            &user,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let mut as_user = tls_redis(1, Some((&user, &password))).await;
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut as_user)
        .await
        .unwrap();
    env.amqp_url = format!(
        "amqps://{user}:{password}@127.0.0.1:{}/{}",
        services.amqps_port(),
        env.vhost
    );
    env.redis_url = format!(
        "rediss://{user}:{password}@127.0.0.1:{}/1",
        services.rediss_port()
    );
    env.url_files = true;
    env.vars = [tls_vars("AMQP", "ca.pem"), tls_vars("REDIS", "ca.pem")].concat();
    env.start_system(1);

    let output = env
        .run_to_exit(
            "chorus",
            &[
                "submit",
                "--kind",
                "range-sum",
                "--input",
                r#"{"start": 0, "end": 100, "parts": 4}"#,
                "--wait",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stdout.contains("4950"), "{stdout}");

    for index in 0..3 {
        let log = env.log_of(index);
        assert!(log.contains("connected to RabbitMQ"), "{log}");
        assert!(!log.contains(&password), "password in a log line: {log}");
    }
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_verify_is_refused() {
    let services = services();
    let mut env = TestEnv::new("tls-refused").await;
    let plain_amqp = env.amqp_url.clone();
    let password = "Wrong-CA-s3cret";
    let amqps = format!(
        "amqps://guest:{password}@127.0.0.1:{}/{}",
        services.amqps_port(),
        env.vhost
    );
    let rediss = format!(
        "rediss://default:{password}@127.0.0.1:{}/2",
        services.rediss_port()
    );
    // The broker's certificate is not signed by the CA given; Redis is fine (plain).
    env.vars = tls_vars("AMQP", "other-ca.pem");
    env.amqp_url.clone_from(&amqps);
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    // And the other way round for a worker.
    env.vars = tls_vars("REDIS", "other-ca.pem");
    env.amqp_url = plain_amqp;
    env.redis_url.clone_from(&rediss);
    let worker = env.spawn("chorus-worker", &[]);
    env.vars = [
        tls_vars("AMQP", "other-ca.pem"),
        tls_vars("REDIS", "other-ca.pem"),
    ]
    .concat();
    env.amqp_url = amqps;
    let cli = env.run_to_exit("chorus", &["status", "no-such-task"]).await;

    for (index, service, port) in [
        (orchestrator, "RabbitMQ", services.amqps_port()),
        (worker, "Redis", services.rediss_port()),
    ] {
        let code = env.wait_exit(index, Duration::from_secs(60));
        let log = env.log_of(index);
        assert_eq!(code, Some(69), "{log}");
        let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
        assert_eq!(refusals.len(), 1, "one line: {log}");
        let wanted = format!("{service} at 127.0.0.1:{port} refused: TLS handshake failed");
        assert!(refusals[0].contains(&wanted), "{log}");
        assert!(refusals[0].contains("UnknownIssuer"), "{log}");
        assert!(!log.contains(password), "password in the log: {log}");
    }
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
}

#[tokio::test]
async fn a_ca_file_replaces_the_system_roots() {
    let services = services();
    let mut env = TestEnv::new("tls-roots").await;
    env.amqp_url = format!(
        "amqps://guest:guest@127.0.0.1:{}/{}",
        services.amqps_port(),
        env.vhost
    );
    env.redis_url = format!("rediss://127.0.0.1:{}/3", services.rediss_port());
    // The test CA stands in for the system's roots (rustls-native-certs reads SSL_CERT_FILE):
    // without a CA file both servers verify against it.
    let system = (
        "SSL_CERT_FILE".to_owned(),
        services.tls_file("ca.pem").display().to_string(),
    );
    let client_certificate = |prefix: &str| -> Vec<(String, String)> {
        tls_vars(prefix, "ca.pem")
            .into_iter()
            .filter(|(name, _)| !name.ends_with("_CA"))
            .collect()
    };
    env.vars = [
        vec![system.clone()],
        client_certificate("AMQP"),
        client_certificate("REDIS"),
    ]
    .concat();
    let trusted = env.run_to_exit("chorus", &["status", "no-such-task"]).await;
    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert!(!stderr.contains("refused"), "{stderr}");
    assert_ne!(trusted.status.code(), Some(69), "{stderr}");
    // With the unrelated CA as the CA file, a server that the system's roots would verify is
    // refused: the file replaces them, it does not add to them.
    for (prefix, service, port) in [
        ("AMQP", "RabbitMQ", services.amqps_port()),
        ("REDIS", "Redis", services.rediss_port()),
    ] {
        let ca = (
            format!("CHORUS_{prefix}_TLS_CA"),
            services.tls_file("other-ca.pem").display().to_string(),
        );
        env.vars = [
            vec![system.clone(), ca],
            client_certificate("AMQP"),
            client_certificate("REDIS"),
        ]
        .concat();
        let refused = env.run_to_exit("chorus", &["status", "no-such-task"]).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(69), "{prefix}: {stderr}");
        let wanted = format!("{service} at 127.0.0.1:{port} refused: TLS handshake failed");
        assert!(stderr.contains(&wanted), "{stderr}");
        assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    }
}

#[tokio::test]
async fn help_shows_no_password() {
    let env = TestEnv::new("tls-help").await;
    for bin in [
        "chorus",
        "chorus-orchestrator",
        "chorus-worker",
        "chorus-synthesizer",
        "chorus-bench",
    ] {
        let output = env.run_to_exit(bin, &["--help"]).await;
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("--amqp-url-file"), "{bin}: {help}");
        assert!(help.contains("--redis-tls-ca"), "{bin}: {help}");
        assert!(!help.contains("guest:guest"), "{bin}: {help}");
    }
}

/// Tasks run on a Redis Cluster that speaks TLS only and demands a client certificate on every
/// node (`deploy/redis-cluster.sh` with its TLS directory; `deploy/test.sh` starts it in its
/// cluster step): the services reach the node named by their one seed and the others from the
/// slot map over TLS, present their certificate to each, follow a `MOVED` to another node after
/// a slot moves, and a service given a CA that did not sign the nodes, or no client
/// certificate, is refused with one line (exit 69).
#[tokio::test]
#[ignore = "needs the TLS Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn tasks_run_on_a_redis_cluster_over_mutual_tls() {
    let first = redis_cluster::tls_port().expect("CHORUS_TEST_REDIS_TLS_CLUSTER_PORT");
    // No node answers a client without TLS: the test cannot pass on plain connections.
    for port in redis_cluster::ports(first) {
        let plain = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let ping = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = plain.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await;
        assert!(
            !matches!(ping, Ok(Ok(_))),
            "node {port} answered without TLS"
        );
    }
    redis_cluster::run(redis_cluster::tls_script(first, &["flush"]));
    let mut env = TestEnv::new("tls-cluster").await;
    env.redis_url = redis_cluster::tls_url(first);
    env.vars = tls_vars("REDIS", "ca.pem");
    env.start_system(1);
    let input = r#"{"start": 0, "end": 100, "parts": 4}"#;
    let task = |id| {
        [
            "submit",
            "--kind",
            "range-sum",
            "--input",
            input,
            "--id",
            id,
            "--wait",
        ]
    };
    let (code, stdout) = env.cli(&task("tls-cluster-1")).await;
    assert!(
        code == 0 && stdout.contains("succeeded") && stdout.contains("4950"),
        "{stdout}"
    );

    // The next task's slot moves first: the services' slot map is stale, the node they ask
    // answers MOVED, and they follow it to the new owner, over TLS with their certificate.
    let redirections =
        || redis_cluster::redirections(redis_cluster::tls_script(first, &["redirections"]))[0];
    let before = redirections();
    let key = "chorus:{tls-cluster-2}:task";
    let owner = redis_cluster::run(redis_cluster::tls_script(first, &["owner", key]));
    redis_cluster::run(redis_cluster::tls_script(first, &["move-slot", key]));
    let moved_to = redis_cluster::run(redis_cluster::tls_script(first, &["owner", key]));
    assert_ne!(owner, moved_to);
    let (code, stdout) = env.cli(&task("tls-cluster-2")).await;
    assert!(
        code == 0 && stdout.contains("succeeded") && stdout.contains("4950"),
        "{stdout}"
    );
    assert!(redirections() > before, "no MOVED was followed");

    // A CA that did not sign the nodes, then no client certificate: refused at the handshake,
    // one line, exit 69 (under the services' default log filter, whatever this run's).
    let ca_only = vec![tls_vars("REDIS", "ca.pem").remove(0)];
    for (vars, cause) in [
        (tls_vars("REDIS", "other-ca.pem"), "UnknownIssuer"),
        (ca_only, "CertificateRequired"),
    ] {
        env.vars = vars;
        let filter = [("RUST_LOG", telemetry::DEFAULT_FILTER)];
        let refused = env.spawn_with("chorus-worker", &[], &filter);
        let code = env.wait_exit(refused, Duration::from_secs(60));
        let log = env.log_of(refused);
        assert_eq!(code, Some(69), "{log}");
        // One line for the operator, not one per node from the client library.
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(cause)).collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(lines[0].contains("refused: TLS handshake failed"), "{log}");
    }
    for index in 0..3 {
        let log = env.log_of(index);
        assert!(!log.contains(" ERROR "), "{log}");
    }
}
