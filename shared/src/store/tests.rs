//! Unit tests of the store's pure parts: the Lua headers against the Rust key groups, key
//! names, and the parsing of script replies and stored hashes. The scripts themselves run
//! against a real Redis in `tests/tests/store.rs`.

use std::collections::HashMap;

use redis::Value;
use serde_bytes::ByteBuf;

use super::{
    claim::{claim_reply, Claim},
    graph::parse_graph_reply,
    keys::{Key, GRAPH, PLAN_ENTRIES, PLAN_LISTS, WORKING},
    progress::{progress_by_type, TypeProgress},
    record::{task_record, StoredResult, TaskState},
    results::{read_recorded, Recorded, ResultStatus},
    run::read_leased,
    TaskKeys,
};
use crate::protocol::{self, PlanEntry, SubtaskOutcome};

fn text(value: &str) -> Value {
    Value::BulkString(value.as_bytes().to_vec())
}

fn entry(id: &str) -> PlanEntry {
    PlanEntry {
        id: id.to_owned(),
        worker_type: "default".to_owned(),
        depends_on: Vec::new(),
        depth: 0,
        payload: ByteBuf::from(vec![1, 2, 3]),
        child: None,
    }
}

fn encoded(entry: &PlanEntry) -> Value {
    Value::BulkString(protocol::encode(entry).expect("entry encodes"))
}

/// The names a Lua file's header gives `KEYS[1]`, `KEYS[2]`, ... (lines `-- KEYS[n]: name`).
fn header_keys(lua: &str) -> Vec<(usize, String)> {
    lua.lines()
        .filter_map(|line| line.strip_prefix("-- KEYS["))
        .filter_map(|rest| {
            let (index, name) = rest.split_once("]: ")?;
            let index = index.parse().ok()?;
            Some((index, name.split_whitespace().next()?.to_owned()))
        })
        .collect()
}

fn numbered(keys: &[Key]) -> Vec<(usize, String)> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| (i + 1, key.suffix().to_owned()))
        .collect()
}

#[test]
fn the_preludes_bind_the_keys_of_their_rust_groups_in_order() {
    assert_eq!(
        header_keys(include_str!("lua/prelude/graph.lua")),
        numbered(&GRAPH)
    );
    let plan: Vec<Key> = PLAN_ENTRIES.iter().chain(&PLAN_LISTS).copied().collect();
    assert_eq!(
        header_keys(include_str!("lua/prelude/plan.lua")),
        numbered(&plan)
    );
}

/// Every `.lua` file under `dir`, at any depth.
fn lua_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            lua_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "lua") {
            found.push(path);
        }
    }
}

#[test]
fn every_lua_file_says_what_it_takes_and_gives() {
    let mut files = Vec::new();
    lua_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    for path in &files {
        let prelude = path.parent().is_some_and(|dir| dir.ends_with("prelude"));
        let lua = std::fs::read_to_string(path).expect("lua file");
        let header: Vec<&str> = lua.lines().take_while(|l| l.starts_with("--")).collect();
        let wanted: &[&str] = if prelude {
            &["-- KEYS", "-- Defines:"]
        } else {
            &["-- KEYS", "-- ARGV", "-- Returns:"]
        };
        for start in wanted {
            assert!(
                header.iter().any(|line| line.starts_with(start)),
                "{} has no {start} line in its header",
                path.display()
            );
        }
    }
    assert!(files.len() > 20, "only {} Lua files found", files.len());
}

#[test]
fn task_keys_share_the_task_hash_tag() {
    let keys = TaskKeys::new("t-1");
    assert_eq!(keys.task(), "chorus:{t-1}:task");
    assert_eq!(keys.plan_lease(), "chorus:{t-1}:plan-lease");
    assert_eq!(keys.worker_types(), "chorus:{t-1}:worker-types");
    assert_eq!(
        keys.all(&GRAPH)[..3],
        [keys.task(), keys.pending(), keys.results()]
    );
    let whole_plan = keys.whole_plan();
    assert_eq!(whole_plan.len(), 11);
    assert_eq!(whole_plan[9..], [keys.wave(), keys.ready()]);
    let cleared = keys.cleared_by_plan();
    assert_eq!(cleared.len(), WORKING.len() + 1);
    assert_eq!(cleared.last(), Some(&keys.types()));
}

#[test]
fn a_graph_reply_gives_skipped_ids_and_released_entries() {
    let reply = [
        text("revised"),
        Value::Int(4),
        Value::Int(2),
        text("x"),
        text("y"),
        text("a"),
        encoded(&entry("a")),
        text("b"),
        encoded(&entry("b")),
    ];
    let parsed = parse_graph_reply("t", &reply).expect("reply parses");
    assert_eq!(parsed.status, "revised");
    assert_eq!(parsed.remaining, 4);
    assert_eq!(parsed.skipped, ["x", "y"]);
    assert_eq!(parsed.released, [entry("a"), entry("b")]);

    let fenced = parse_graph_reply("t", &[text("fenced"), Value::Int(0), Value::Int(0)])
        .expect("fenced reply parses");
    assert!(fenced.released.is_empty() && fenced.skipped.is_empty());
    assert!(parse_graph_reply("t", &[]).is_err(), "no status");
    let odd = [text("ok"), Value::Int(0), Value::Int(0), text("a")];
    assert!(
        parse_graph_reply("t", &odd).is_err(),
        "an id without its entry"
    );
}

#[test]
fn a_recorded_reply_splices_statuses_between_skipped_and_released() {
    let reply = [
        text("batch"),
        Value::Int(1),
        Value::Int(1),
        text("z"),
        Value::Int(3),
        text("new"),
        text("duplicate"),
        text("limit:12"),
        text("c"),
        encoded(&entry("c")),
    ];
    let recorded = read_recorded("t", 3, &reply).expect("reply parses");
    assert_eq!(
        recorded,
        Recorded::Batch {
            statuses: vec![
                ResultStatus::New,
                ResultStatus::Duplicate,
                ResultStatus::TooManySubtasks { would_have: 12 },
            ],
            remaining: 1,
            released: vec![entry("c")],
            skipped: vec!["z".to_owned()],
        }
    );
    assert!(
        read_recorded("t", 2, &reply).is_err(),
        "one status per result"
    );
    let finished = [text("finished"), Value::Int(0), Value::Int(0)];
    assert_eq!(
        read_recorded("t", 5, &finished).expect("parses"),
        Recorded::TaskFinished
    );
    let unknown = [text("unknown-task"), Value::Int(0), Value::Int(0)];
    assert_eq!(
        read_recorded("t", 5, &unknown).expect("parses"),
        Recorded::UnknownTask
    );
}

#[test]
fn result_statuses_parse_as_the_script_writes_them() {
    assert_eq!(ResultStatus::parse("new"), ResultStatus::New);
    assert_eq!(ResultStatus::parse("duplicate"), ResultStatus::Duplicate);
    assert_eq!(
        ResultStatus::parse("unknown-subtask"),
        ResultStatus::UnknownSubtask
    );
    assert_eq!(
        ResultStatus::parse("limit:7"),
        ResultStatus::TooManySubtasks { would_have: 7 }
    );
    assert_eq!(
        ResultStatus::parse("conflict:id a: already used"),
        ResultStatus::SpawnConflict {
            reason: "id a: already used".to_owned()
        }
    );
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
        .collect()
}

#[test]
fn a_task_hash_parses_with_defaults_for_fields_not_written_yet() {
    assert!(task_record("t", &HashMap::new()).expect("empty").is_none());
    let record = task_record(
        "t",
        &fields(&[
            ("state", "running"),
            ("kind", "range-sum"),
            ("total", "5"),
            ("succeeded", "2"),
            ("delivered", "1"),
            ("wave_is_order", "0"),
        ]),
    )
    .expect("parses")
    .expect("a record");
    assert_eq!(record.state, TaskState::Running);
    assert_eq!(record.kind, "range-sum");
    assert_eq!(
        (record.total, record.succeeded, record.duplicates),
        (5, 2, 0)
    );
    assert!(record.delivered);
    assert_eq!(record.round, 1);
    assert!(!record.wave_is_order);
    assert!(record.parent.is_none());
    assert!(
        task_record("t", &fields(&[("kind", "x")])).is_err(),
        "no state"
    );
    assert!(task_record("t", &fields(&[("state", "lost")])).is_err());
}

#[test]
fn a_lease_reply_comes_with_results_only_for_a_settled_task() {
    let stored = StoredResult {
        attempts: 1,
        outcome: SubtaskOutcome::Failed("boom".to_owned()),
    };
    let task = Value::Array(vec![text("state"), text("running")]);
    let settled = [
        Value::Int(2),
        Value::Int(0),
        task.clone(),
        Value::Array(vec![text("s0")]),
        Value::Array(vec![
            text("s0"),
            Value::BulkString(protocol::encode(&stored).expect("encodes")),
        ]),
    ];
    let read = read_leased("t", &settled).expect("parses");
    assert_eq!((read.runs, read.pending), (Some(2), 0));
    assert!(read.record.is_some());
    let got = read.settled.expect("results");
    assert_eq!(got.order, ["s0"]);
    assert_eq!(got.results, [("s0".to_owned(), stored)]);

    let finished = [Value::Int(-1), Value::Int(3), task];
    let read = read_leased("t", &finished).expect("parses");
    assert_eq!((read.runs, read.pending), (None, 3));
    assert!(read.settled.is_none());
    let unknown = [Value::Int(-1), Value::Int(0), Value::Array(Vec::new())];
    assert!(read_leased("t", &unknown).expect("parses").record.is_none());
}

#[test]
fn type_counters_group_by_worker_type() {
    let counters: HashMap<String, i64> = [
        ("default", 3),
        ("default:released", 3),
        ("default:ok", 2),
        ("gpu", 2),
        ("gpu:released", 1),
        ("gpu:skipped", 1),
        ("gpu:failed", -1),
    ]
    .into_iter()
    .map(|(field, n)| (field.to_owned(), n))
    .collect();
    let progress = progress_by_type(counters);
    assert_eq!(
        progress,
        [
            TypeProgress {
                worker_type: "default".to_owned(),
                total: 3,
                released: 3,
                succeeded: 2,
                ..TypeProgress::default()
            },
            TypeProgress {
                worker_type: "gpu".to_owned(),
                total: 2,
                released: 1,
                skipped: 1,
                ..TypeProgress::default()
            },
        ]
    );
    assert_eq!(progress[0].in_flight(), 1);
    assert_eq!(progress[1].waiting(), 0);
}

#[test]
fn a_claim_of_a_known_task_reports_its_state() {
    assert!(matches!(
        claim_reply("exists", b"planned"),
        Ok(Claim::Exists(TaskState::Planned))
    ));
    assert!(claim_reply("exists", b"gone").is_err());
    assert!(claim_reply("finished", b"not msgpack").is_err());
}
