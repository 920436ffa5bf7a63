//! Least privilege on a Redis Cluster (docs/security.md#least-privilege,
//! docs/deployment.md#redis-cluster): every node of the test cluster gets the Redis ACL users of
//! `deploy/acl/redis.acl` (a cluster does not share its users between nodes), the services
//! connect as their own users through `redis+cluster://user:password@...`, and a task runs to
//! its outcome while its slot is resharded, so that redis-rs's cluster commands (`CLUSTER SLOTS`,
//! `ASKING` after an `ASK`) run under those users too; no node refuses them anything but the
//! `CONFIG GET` of the start-up check. Needs the cluster (`CHORUS_TEST_REDIS_CLUSTER_PORT`), so
//! it is ignored in the plain run and `deploy/test.sh` runs it in its cluster step.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, time::Duration};

use chorus_tests::{
    acl_lines,
    fault::{check, collect_replies, wait_for_progress, Planned},
    redis_cluster, TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::Value;

/// The roles whose users the services and the CLI connect as.
const ROLES: [&str; 4] = ["orchestrator", "worker", "synthesizer", "cli"];

/// This test's ACL users on every node of the cluster, named `<vhost>-<role>`; removed when
/// dropped.
struct Users {
    first: u16,
    prefix: String,
}

impl Users {
    fn create(first: u16, prefix: &str) -> Self {
        let users = Self {
            first,
            prefix: prefix.to_owned(),
        };
        let rules = acl_lines("redis.acl");
        for role in ROLES {
            let user = users.name(role);
            let password = format!(">{}", password(role));
            let mut args = vec!["acl-setuser", &user, "reset", "on", &password];
            args.extend(rules[role].iter().map(String::as_str));
            redis_cluster::run(redis_cluster::script(first, &args));
        }
        users
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// `role`'s cluster URL, every node a seed.
    fn url(&self, role: &str) -> String {
        let seeds = redis_cluster::url(self.first);
        seeds.replacen(
            "://",
            &format!("://{}:{}@", self.name(role), password(role)),
            1,
        )
    }

    /// What any node refused this test's users, as `ACL LOG` lists it: `(port, user, object)`.
    async fn refused(&self) -> Vec<(u16, String, String)> {
        let mut refused = Vec::new();
        for port in redis_cluster::ports(self.first) {
            let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
                .arg("LOG")
                .arg(1000)
                .query_async(&mut node)
                .await
                .unwrap();
            let text = |entry: &HashMap<String, redis::Value>, field: &str| {
                redis::from_redis_value_ref::<String>(&entry[field]).unwrap()
            };
            refused.extend(
                entries
                    .iter()
                    .filter(|entry| text(entry, "username").starts_with(&self.prefix))
                    .map(|entry| (port, text(entry, "username"), text(entry, "object"))),
            );
        }
        refused
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for role in ROLES {
            drop(redis_cluster::script(self.first, &["acl-deluser", &self.name(role)]).output());
        }
    }
}

fn password(role: &str) -> String {
    format!("pw-{role}-secret")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn services_run_under_their_acl_users_on_the_cluster_through_a_resharding() {
    let first = redis_cluster::port()
        .expect("CHORUS_TEST_REDIS_CLUSTER_PORT: the first port of deploy/redis-cluster.sh");
    let mut env = TestEnv::new("aclcluster").await;
    let users = Users::create(first, &env.vhost);
    for role in ["orchestrator", "worker", "synthesizer"] {
        let mut args = vec![];
        if role == "worker" {
            // A bucket, so that take_token.lua runs under the worker's user; two subtasks at a
            // time, so that the task is still running while its slot moves.
            args.extend(["--rate-limit", "default=1000", "--concurrency", "2"]);
        }
        env.spawn_with(
            &format!("chorus-{role}"),
            &args,
            &[("CHORUS_REDIS_URL", &users.url(role))],
        );
    }
    let run = [Planned {
        id: "acl-1".to_owned(),
        start: 0,
        end: 10_000,
        parts: 20,
        poison: vec![],
        delay_ms: 300,
        shape: Value::Null,
        options: Value::Null,
    }];
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to.as_str()));
    let body = rmp_serde::to_vec_named(&run[0].request()).unwrap();
    client.publish("chorus.tasks", &body, properties).await;
    wait_for_progress(&env, &run, 2).await;

    // The task's slot moves mid-run: the services meet ASK, and send ASKING, as their users.
    let redirections =
        || redis_cluster::redirections(redis_cluster::script(first, &["redirections"]))[1];
    let before = redirections();
    let key = "chorus:{acl-1}:task";
    redis_cluster::run(redis_cluster::script(first, &["move-slot", key, "", "100"]));

    let collected = collect_replies(&mut replies, 1, Duration::from_secs(60)).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert!(report.is_clean(), "{report}");
    let asked = redirections() - before;
    assert!(
        asked > 0,
        "no command met ASK: the resharding tested nothing"
    );

    // The CLI's user reads the outcome on the cluster too.
    let logs = chorus_tests::services().state_dir.join("logs");
    let cli_env = TestEnv::with_urls(
        &format!("{}-cli", env.vhost),
        env.amqp_url.clone(),
        users.url("cli"),
        logs,
    );
    let (code, out) = cli_env.cli(&["result", "acl-1"]).await;
    assert_eq!(code, 0, "{out}");
    let outcome: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["status"], "succeeded", "{outcome}");

    let refused = users.refused().await;
    for (port, user, object) in &refused {
        assert!(
            object == "config|get",
            "node {port} refused {user} {object}: {refused:?}"
        );
    }
}
