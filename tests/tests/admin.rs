//! Admin commands against the real services: `chorus tasks` lists the recent tasks from the
//! index the services keep in Redis (filters, limit, newest first), and the index stays bounded
//! by age and count when written.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_shared::{
    admin::tasks::{self, Entry, Filter},
    store::Store,
};
use chorus_tests::TestEnv;
use serde_json::Value;

/// `chorus tasks ARGS --json`, parsed.
async fn tasks_json(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["tasks", "--json"];
    all.extend_from_slice(args);
    let (code, out) = env.cli(&all).await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn ids(listed: &[Value]) -> Vec<&str> {
    listed.iter().map(|t| t["id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chorus_tasks_lists_recent_tasks_with_filters() {
    let mut env = TestEnv::new("admin-tasks").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    env.spawn("chorus-worker", &[]);
    for id in ["sum-1", "sum-2"] {
        let (code, out) = env
            .cli(&[
                "submit",
                "--kind",
                "range-sum",
                "--id",
                id,
                "--wait",
                "--input",
                r#"{"start": 0, "end": 10, "parts": 2}"#,
            ])
            .await;
        assert_eq!(code, 0, "{out}");
    }
    // A task no worker serves stays running.
    let (code, out) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--id",
            "stuck",
            "--input",
            r#"{"start": 0, "end": 10, "parts": 2, "types": ["nobody"]}"#,
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = tasks_json(&env, &[]).await;
        if listed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids(&listed), ["stuck", "sum-2", "sum-1"], "{listed:?}");
    let done = &listed[1];
    assert_eq!(done["kind"], "range-sum");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["settled"], 2);
    assert_eq!(done["subtasks"], 2);
    assert!(done["finished_ms"].as_u64().unwrap() >= done["submitted_ms"].as_u64().unwrap());

    let running = tasks_json(&env, &["--status", "running"]).await;
    assert_eq!(ids(&running), ["stuck"]);
    let succeeded = tasks_json(&env, &["--status", "succeeded", "--limit", "1"]).await;
    assert_eq!(ids(&succeeded), ["sum-2"]);
    assert!(tasks_json(&env, &["--kind", "wordfreq"]).await.is_empty());

    // The table names the columns and shows progress.
    let (code, table) = env.cli(&["tasks", "--kind", "range-sum"]).await;
    assert_eq!(code, 0, "{table}");
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("PROGRESS"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sum-1") && l.contains("succeeded") && l.ends_with("2/2")),
        "{table}"
    );
    let (code, out) = env.cli(&["tasks", "--status", "bogus"]).await;
    assert_eq!(code, 64, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_trimmed_by_age_and_count_as_it_is_written() {
    let env = TestEnv::new("admin-trim").await;
    let store = Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    let now = chorus_shared::clock::now_ms();
    let day = Duration::from_secs(24 * 3600);
    let entry = |submitted_ms| Entry {
        kind: "k".into(),
        status: tasks::LIVE.into(),
        submitted_ms,
        finished_ms: None,
    };
    // Two days old, then a write with a one-day bound drops it.
    store
        .index_task_bounded("old", &entry(now - 2 * 86_400_000), day * 7, 100)
        .await
        .unwrap();
    let dropped = store
        .index_task_bounded("new-0", &entry(now), day, 100)
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    for i in 1..5 {
        store
            .index_task_bounded(&format!("new-{i}"), &entry(now + i), day, 3)
            .await
            .unwrap();
    }
    let filter = Filter {
        status: None,
        kind: None,
        limit: 100,
    };
    let listed = tasks::list(&store, &filter).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["new-4", "new-3", "new-2"]);
    // The entries hash is trimmed with the sorted set.
    let mut redis = env.redis().await;
    let entries: u64 = redis::cmd("HLEN")
        .arg(tasks::ENTRIES_KEY)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(entries, 3);
    // An outcome indexed later keeps the submit time and kind, and is not hidden by a late
    // live write (a redelivered claim).
    let finished = Entry {
        kind: String::new(),
        status: "failed".into(),
        submitted_ms: now + 100,
        finished_ms: Some(now + 200),
    };
    store
        .index_task_bounded("new-4", &finished, day, 3)
        .await
        .unwrap();
    store
        .index_task_bounded("new-4", &entry(now + 300), day, 3)
        .await
        .unwrap();
    let listed = tasks::list(&store, &filter).await.unwrap();
    assert_eq!(listed[0].id, "new-4");
    assert_eq!(listed[0].kind, "k");
    assert_eq!(listed[0].status, "failed");
    assert_eq!(listed[0].submitted_ms, now + 4);
    assert_eq!(listed[0].finished_ms, Some(now + 200));
    // The claim's write may land after the outcome's (both are written beside the task's way,
    // not on it): the outcome stays, and the claim's earlier submit time replaces the end's.
    let ended_first = Entry {
        kind: String::new(),
        status: "succeeded".into(),
        submitted_ms: now + 500,
        finished_ms: Some(now + 500),
    };
    store
        .index_task_bounded("late-claim", &ended_first, day, 3)
        .await
        .unwrap();
    store
        .index_task_bounded("late-claim", &entry(now + 450), day, 3)
        .await
        .unwrap();
    let listed = tasks::list(&store, &filter).await.unwrap();
    assert_eq!(listed[0].id, "late-claim");
    assert_eq!(listed[0].kind, "k");
    assert_eq!(listed[0].status, "succeeded");
    assert_eq!(listed[0].submitted_ms, now + 450);
    assert_eq!(listed[0].finished_ms, Some(now + 500));
}

#[tokio::test(flavor = "multi_thread")]
async fn chorus_graph_draws_a_running_tasks_subtasks_and_dependencies() {
    let mut env = TestEnv::new("admin-graph").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    env.spawn("chorus-worker", &[]);
    // 0 (default) runs, 1 waits in a queue nobody serves, 2 waits for 1.
    let (code, out) = env
        .cli(&[
            "submit", "--kind", "range-sum", "--id", "chain", "--input",
            r#"{"start": 0, "end": 30, "parts": 3, "chain": true, "types": ["default", "nobody", "default"]}"#,
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let mut graph = Value::Null;
    for _ in 0..100 {
        let (code, out) = env.cli(&["graph", "chain", "--format", "json"]).await;
        if code == 0 {
            graph = serde_json::from_str(&out).unwrap();
            if graph["nodes"][0]["state"] == "succeeded" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = graph["nodes"].as_array().unwrap();
    let states: Vec<(&str, &str, &str)> = nodes
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                n["worker_type"].as_str().unwrap(),
                n["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("0", "default", "succeeded"),
            ("1", "nobody", "released"),
            ("2", "default", "pending")
        ],
        "{graph}"
    );
    assert_eq!(nodes[0]["attempts"], 1);
    assert_eq!(
        graph["edges"],
        serde_json::json!([{"from": "0", "to": "1"}, {"from": "1", "to": "2"}])
    );
    let (code, dot) = env.cli(&["graph", "chain"]).await;
    assert_eq!(code, 0, "{dot}");
    assert!(dot.starts_with("digraph {"), "{dot}");
    assert!(dot.contains("  n0 -> n1;\n  n1 -> n2;\n"), "{dot}");
    let (code, mermaid) = env.cli(&["graph", "chain", "--format", "mermaid"]).await;
    assert_eq!(code, 0, "{mermaid}");
    assert!(mermaid.contains("  n1 --> n2\n"), "{mermaid}");

    // Finished: the plan is gone, and the command says so; unknown: exit 4.
    let (code, out) = env.cli(&["cancel", "chain"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.cli(&["watch", "chain", "--timeout-secs", "30"]).await;
    assert_eq!(code, 5, "{out}");
    let (code, out) = env.cli(&["graph", "chain"]).await;
    assert_eq!(code, 6, "{out}");
    let (code, out) = env.cli(&["graph", "no-such-task"]).await;
    assert_eq!(code, 4, "{out}");
}
