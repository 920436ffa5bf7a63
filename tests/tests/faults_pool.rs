//! Fault scenario of a kind's external processes: a worker SIGKILLed with its pool of JSON
//! Lines processes mid-task. docs/reliability.md lists what it proves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::fault::{collect_replies, msgpack, note, start, worker_args, Cluster, DEADLINE};
use lapin::{types::ShortString, BasicProperties};
use serde_json::json;

/// Live children of process `pid` (every thread's `/proc/<pid>/task/<tid>/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(Result::ok)
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), `None` once there is no such
/// process.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A kinds file with kind `slow-pool`: no planner (a subtask per item of `input.items`), a
/// pool of 4 `slow_pool.py` processes (`delay_ms` per call, each call logged to `log`) as
/// handler, no synthesis (the outputs as a list).
fn slow_pool_kinds_file(dir: &std::path::Path, log: &std::path::Path, delay_ms: u64) -> String {
    let script = chorus_tests::repo_dir().join("tests/fixtures/kinds/slow_pool.py");
    let text = format!(
        "[kinds.slow-pool]\nhandlers.default = {{ type = \"command\", mode = \"pool\", pool_size = 4, \
         program = \"python3\", args = [{:?}, {:?}, \"{delay_ms}\"] }}\n",
        script.display().to_string(),
        log.display().to_string(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn s20_a_worker_killed_with_its_pool_processes_mid_task_loses_and_double_counts_nothing() {
    let cluster = Cluster::start("s20");
    let (mut env, client) = start(&cluster, "s20").await;
    let dir = cluster.state_dir.join("kinds");
    let log = dir.join("calls.log");
    let file = slow_pool_kinds_file(&dir, &log, 200);
    let mut worker = vec!["--kinds-file", &file, "--concurrency", "4"];
    worker.extend_from_slice(&worker_args()[2..]);
    env.spawn("chorus-orchestrator", &["--kinds-file", &file]);
    let victim = env.spawn("chorus-worker", &worker);
    let survivor = env.spawn("chorus-worker", &worker);
    env.spawn("chorus-synthesizer", &["--kinds-file", &file]);
    client.wait_for_consumers("chorus.subtasks", 2).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let (tasks, items) = (3, 24_u64);
    for task in 0..tasks {
        let request = json!({"kind": "slow-pool", "id": format!("s20-{task}"),
                             "input": {"items": (0..items).map(|i| i + 100 * task).collect::<Vec<_>>()}});
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to.as_str()));
        client
            .publish("chorus.tasks", &msgpack(&request), properties)
            .await;
    }
    // SIGKILL the victim while its whole pool is busy and some calls have finished.
    let victim_pid = env.pid(victim);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let pool = loop {
        let pool = children_of(victim_pid);
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        if pool.len() == 4 && calls >= 12 {
            break pool;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim's pool never filled: {pool:?}, {calls} calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    env.kill(victim);
    let restarted = env.spawn("chorus-worker", &worker);
    let collected = collect_replies(&mut replies, tasks as usize, DEADLINE).await;
    assert_eq!(collected.conflicting, 0);
    assert!(
        collected.counts.values().all(|&n| n == 1),
        "{:?}",
        collected.counts
    );
    for task in 0..tasks {
        let outcome = &collected.outcomes[&format!("s20-{task}")];
        let expected: Vec<u64> = (0..items).map(|i| 2 * (i + 100 * task)).collect();
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        assert_eq!(outcome["output"], json!(expected), "{outcome}");
        let stats = &outcome["stats"];
        assert_eq!(
            (&stats["subtasks"], &stats["succeeded"], &stats["failed"]),
            (&json!(items), &json!(items), &json!(0)),
            "{outcome}"
        );
    }
    // The victim's pool processes got the parent-death signal: none runs any more. (They wait
    // as zombies for whatever reaps orphans on this machine; their worker cannot reap them.)
    for _ in 0..250 {
        if pool
            .iter()
            .all(|&pid| matches!(proc_state(pid), None | Some('Z' | 'X')))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states: Vec<_> = pool.iter().map(|&pid| (pid, proc_state(pid))).collect();
    assert!(
        states
            .iter()
            .all(|(_, s)| matches!(s, None | Some('Z' | 'X'))),
        "the killed worker's pool outlived it: {states:?}"
    );
    // The live workers reap what they start: no zombie among their children.
    for index in [survivor, restarted] {
        let zombies: Vec<u32> = children_of(env.pid(index))
            .into_iter()
            .filter(|&pid| proc_state(pid) == Some('Z'))
            .collect();
        assert!(
            zombies.is_empty(),
            "zombie children of a live worker: {zombies:?}"
        );
    }
    // Every subtask ran, and only those the kill interrupted ran twice.
    let calls = std::fs::read_to_string(&log).unwrap();
    let mut runs: std::collections::HashMap<(String, String), Vec<u32>> = Default::default();
    for line in calls.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        runs.entry((fields[0].to_owned(), fields[1].to_owned()))
            .or_default()
            .push(fields[3].parse().unwrap());
    }
    assert_eq!(runs.len(), tasks as usize * items as usize, "{calls}");
    let redone: Vec<_> = runs.iter().filter(|(_, pids)| pids.len() > 1).collect();
    assert!(!redone.is_empty(), "the kill interrupted no call");
    for (subtask, pids) in &redone {
        assert!(
            pool.contains(&pids[0]),
            "{subtask:?} ran twice though its first run was not on the killed worker: {pids:?}"
        );
    }
    note(&format!(
        "[pool worker SIGKILL] {} calls for {} subtasks, {} redone after the kill",
        calls.lines().count(),
        runs.len(),
        redone.len()
    ));
}
