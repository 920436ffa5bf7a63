//! Unit tests of the cluster URL form and the Redis Cluster audit: every key a script is given
//! shares one hash slot with the others, and no script touches a key it was not given (Redis
//! Cluster sends a script to the node of its keys' slot, and refuses keys of other slots).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::{refused_before_running, seeds};
use crate::store::keys::{Key, TaskKeys};

#[test]
fn a_cluster_url_gives_one_seed_per_node_with_the_same_credentials() {
    assert_eq!(
        seeds("redis+cluster://chorus:p%40ss@10.0.0.1:7000,10.0.0.2:7001/0").unwrap(),
        Some(vec![
            "redis://chorus:p%40ss@10.0.0.1:7000".to_owned(),
            "redis://chorus:p%40ss@10.0.0.2:7001".to_owned(),
        ])
    );
    assert_eq!(
        seeds("rediss+cluster://node:7000").unwrap(),
        Some(vec!["rediss://node:7000".to_owned()])
    );
    assert_eq!(seeds("redis://127.0.0.1:6379/3").unwrap(), None);
    assert_eq!(seeds("rediss://:pw@host:6380").unwrap(), None);
}

#[test]
fn a_cluster_url_with_another_database_or_an_empty_host_is_refused_without_the_password() {
    let error = seeds("redis+cluster://u:secret@h:7000/2").unwrap_err();
    assert!(error.contains("only database 0"), "{error}");
    assert!(!error.contains("secret"), "{error}");
    let error = seeds("redis+cluster://u:secret@h:7000,,h:7001").unwrap_err();
    assert!(error.contains("host:port"), "{error}");
    assert!(!error.contains("secret"), "{error}");
    assert!(seeds("redis+cluster://").is_err());
    assert!(seeds("redis+cluster://h:7000?protocol=resp3").is_err());
}

/// The error a node's reply `line` (a RESP error, `-CODE message`) becomes in redis-rs.
fn server_error(line: &str) -> redis::RedisError {
    redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
        .unwrap()
        .extract_error()
        .unwrap_err()
}

#[test]
fn only_refusals_before_running_are_tried_again() {
    for refusal in [
        "MOVED 3999 127.0.0.1:7001",
        "ASK 3999 127.0.0.1:7001",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
    ] {
        assert!(refused_before_running(&server_error(refusal)), "{refusal}");
    }
    // A script's own error, a refused user, a timeout: the command ran, or retrying is no use.
    for other in [
        "ERR Error running script",
        "NOPERM this user has no permissions to run the 'asking' command",
        "NOSCRIPT No matching script",
    ] {
        assert!(!refused_before_running(&server_error(other)), "{other}");
    }
    let timeout = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    assert!(!refused_before_running(&timeout));
}

/// The part of `key` Redis Cluster hashes to find its slot: the first `{...}` when not empty,
/// else the whole key (the Redis Cluster specification, "Hash tags").
fn hashed(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(close) = key[open + 1..].find('}') {
            if close > 0 {
                return &key[open + 1..open + 1 + close];
            }
        }
    }
    key
}

const EVERY_KEY: [Key; 21] = [
    Key::Task,
    Key::Waiters,
    Key::Plan,
    Key::Order,
    Key::Wave,
    Key::Pending,
    Key::Results,
    Key::Done,
    Key::Waiting,
    Key::Dependents,
    Key::Ready,
    Key::Outbox,
    Key::WorkerTypes,
    Key::Types,
    Key::Children,
    Key::Starts,
    Key::Outcome,
    Key::PlanLease,
    Key::SynthLease,
    Key::Cancel,
    Key::Held,
];

#[test]
fn every_key_of_a_task_is_in_one_slot_whatever_its_id() {
    // Braces are refused in ids (`protocol::validate_id`, so no id starting with `}` can
    // empty the tag); the ones with braces here show the tag holds even past that check.
    for id in ["t-1", "a}b", "{x}", "x{y}z", "ünï-cödé", "{", "x}"] {
        let keys = TaskKeys::new(id).all(&EVERY_KEY);
        let tag = hashed(&keys[0]);
        for key in &keys {
            assert_eq!(hashed(key), tag, "task {id:?}: {key} is in another slot");
        }
    }
}

#[test]
fn every_global_key_group_is_in_one_slot() {
    let index = [
        crate::admin::tasks::INDEX_KEY,
        crate::admin::tasks::ENTRIES_KEY,
    ];
    assert_eq!(hashed(index[0]), hashed(index[1]));
    for model in ["gpt-4o", "a}b", "{m}"] {
        let keys = crate::steps::llm::limits::keys(model);
        for key in &keys {
            assert_eq!(hashed(key), hashed(&keys[0]), "model {model:?}: {key}");
        }
    }
    // One key per script: a slot of its own is fine, but it must hash on its tag, so each
    // worker type's bucket can live on any node.
    assert_eq!(hashed(&crate::ratelimit::bucket_key("gpu")), "gpu");
}

/// Every `.lua` file under `dir`, at any depth.
fn lua_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            lua_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "lua") {
            found.push(path);
        }
    }
}

/// Keys a script reads from `ARGV` rather than `KEYS`, with why that is safe on a cluster.
const KEYS_IN_ARGV: [(&str, &str); 1] = [(
    "begin_run.lua",
    "TASK: the same task's hash, so the same slot as KEYS[1] (and only read)",
)];

/// Commands that name no key or that a cluster cannot serve from one slot.
const CROSS_SLOT: [&str; 6] = ["KEYS", "SCAN", "FLUSHDB", "FLUSHALL", "RANDOMKEY", "SELECT"];

/// The first argument after the command of every `redis.call(...)` / `redis.pcall(...)` in
/// `lua`, with the command.
fn calls(lua: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (start, _) in lua.match_indices("redis.") {
        let rest = &lua[start + "redis.".len()..];
        let Some(args) = rest
            .strip_prefix("call(")
            .or_else(|| rest.strip_prefix("pcall("))
        else {
            continue;
        };
        let args = &args[..args.find(')').unwrap_or(args.len())];
        let mut parts = args.splitn(3, ',').map(str::trim);
        let command = parts.next().unwrap_or("").trim_matches(['\'', '"']);
        let first = parts.next().unwrap_or("").to_owned();
        found.push((command.to_ascii_uppercase(), first));
    }
    found
}

/// The names `lua` binds to an `ARGV` value (`local A, B = KEYS[1], ARGV[2]`).
fn bound_from_argv(lua: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in lua.lines() {
        let Some((names, values)) = line
            .trim_start()
            .strip_prefix("local ")
            .and_then(|rest| rest.split_once(" = "))
        else {
            continue;
        };
        for (name, value) in names.split(',').zip(values.split(',')) {
            if value.trim().starts_with("ARGV[") {
                found.push(name.trim().to_owned());
            }
        }
    }
    found
}

#[test]
fn no_script_builds_a_key_or_runs_a_command_across_slots() {
    let mut files = Vec::new();
    lua_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20, "found only {} Lua files", files.len());
    let mut checked = 0;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let lua = std::fs::read_to_string(&path).unwrap();
        for (command, first) in calls(&lua) {
            checked += 1;
            assert!(
                !CROSS_SLOT.contains(&command.as_str()),
                "{name}: {command} cannot run on a Redis Cluster"
            );
            // A key literal or a name built with `..` is a key outside KEYS, in whatever slot.
            assert!(
                !first.contains(['\'', '"']) && !first.contains(".."),
                "{name}: {command} on a key the script builds itself ({first}): pass it in KEYS"
            );
        }
        let from_argv = bound_from_argv(&lua);
        for (command, first) in calls(&lua) {
            if from_argv.contains(&first) {
                assert!(
                    KEYS_IN_ARGV.iter().any(|(file, _)| *file == name),
                    "{name}: {command} on {first}, a key taken from ARGV: pass it in KEYS or explain it in KEYS_IN_ARGV"
                );
            }
        }
    }
    assert!(checked > 100, "checked only {checked} calls");
}

#[test]
fn the_audit_finds_a_key_built_in_a_script_or_taken_from_argv() {
    let calls = calls("redis.call('HGET', 'chorus:' .. ARGV[1], 'state')");
    assert_eq!(calls[0].0, "HGET");
    assert!(calls[0].1.contains(".."));
    let lua = include_str!("../lua/begin_run.lua");
    assert_eq!(bound_from_argv(lua), ["TASK"]);
}
