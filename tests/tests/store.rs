//! The Redis side of the fan-in, against the real Redis: which calls acquire and release
//! leases, and how many round trips a step costs (counted with `MONITOR`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{sync::Arc, time::Duration};

use chorus_shared::{
    clock::now_ms,
    graph,
    protocol::{self, PlanEntry, ResolvedOptions, ResultMessage, SubtaskOutcome, TaskOptions},
    store::{
        Claim, LeaseRequest, Planning, Recorded, ResultStatus, SettledLease, Store, Submission,
        TaskKeys,
    },
};
use chorus_tests::TestEnv;
use chorus_worker::watch::TaskWatch;
use redis::AsyncCommands;
use serde_bytes::ByteBuf;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);
/// The fingerprint every claim here records (docs/operations.md, "Rolling out a kind").
const FINGERPRINT: &str = "rust:range-sum:test";

async fn store(env: &TestEnv) -> Store {
    Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap()
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

fn result(task: &str, subtask: &str) -> ResultMessage {
    ResultMessage {
        task: task.to_owned(),
        subtask: subtask.to_owned(),
        attempts: 1,
        outcome: SubtaskOutcome::Succeeded(ByteBuf::from(protocol::encode(&7u32).unwrap())),
        spawned: Vec::new(),
        round: 1,
        usage: Vec::new(),
    }
}

/// Claims, plans and starts task `id` of `subtasks` independent subtasks, as the orchestrator
/// does; the plan lease is released as the task moves to running.
async fn running_task(store: &Store, id: &str, subtasks: usize) -> Vec<PlanEntry> {
    let options: ResolvedOptions = TaskOptions::default().resolve().unwrap();
    let options = protocol::encode(&options).unwrap();
    let input = protocol::encode(&()).unwrap();
    let claim = store
        .claim(
            id,
            None,
            Submission {
                kind: "range-sum",
                options: &options,
                input: &input,
                parent: None,
                fingerprint: Some(FINGERPRINT),
            },
            LEASE,
        )
        .await
        .unwrap();
    let Claim::New(Some(Planning { lease, .. })) = claim else {
        panic!("a new task's claim acquires its plan lease");
    };
    let entries: Vec<PlanEntry> = (0..subtasks).map(|n| entry(&format!("s{n}"))).collect();
    let wave = graph::first_wave(&entries, 0);
    store
        .record_plan(id, &lease, &entries, &wave, 0, &[])
        .await
        .unwrap();
    store.end_run(id, "plan").await.unwrap();
    store
        .mark_running(id, entries.len() as u64, &lease)
        .await
        .unwrap();
    lease.release().await.unwrap();
    entries
}

/// `claim_planned` of task `id` with `entries` and no cap.
async fn claim_planned(store: &Store, id: &str, entries: &[PlanEntry]) -> Claim {
    let options: ResolvedOptions = TaskOptions::default().resolve().unwrap();
    let options = protocol::encode(&options).unwrap();
    let input = protocol::encode(&()).unwrap();
    let wave = graph::first_wave(entries, 0);
    let submission = Submission {
        kind: "range-sum",
        options: &options,
        input: &input,
        parent: None,
        fingerprint: Some(FINGERPRINT),
    };
    store
        .claim_planned(id, None, submission, LEASE, entries, &wave, 0, &[])
        .await
        .unwrap()
}

fn synthesis_lease(key: &str) -> LeaseRequest<'_> {
    LeaseRequest {
        key,
        ttl: LEASE,
        run: "synth",
        results_up_to: 1000,
    }
}

#[tokio::test]
async fn the_results_that_settle_a_task_acquire_their_synthesis_lease_in_the_same_call() {
    let env = TestEnv::new("store-settle").await;
    let store = store(&env).await;
    let id = format!("settle-{}", uuid::Uuid::new_v4());
    running_task(&store, &id, 3).await;
    let claimed = store.task(&id).await.unwrap().unwrap();
    assert_eq!(claimed.fingerprint.as_deref(), Some(FINGERPRINT));
    let lease_key = TaskKeys::new(&id).synth_lease();
    let request = synthesis_lease(&lease_key);
    let monitor = env.monitor_redis(&id).await;

    // Two of three results: something is still pending, so no lease is acquired.
    let first = [result(&id, "s0"), result(&id, "s1")];
    let (recorded, lease) = store
        .record_results(&id, &first.iter().collect::<Vec<_>>(), 1000, Some(&request))
        .await
        .unwrap();
    assert!(
        matches!(recorded, Recorded::Batch { remaining: 1, .. }),
        "{recorded:?}"
    );
    assert!(lease.is_none(), "a lease acquired with work still pending");
    let mut conn = env.redis().await;
    assert!(!conn.exists::<_, bool>(&lease_key).await.unwrap());

    // The last one settles the task: the lease comes with the record, the run counted and
    // every result read, in that one script call.
    let last = result(&id, "s2");
    monitor.catch_up().await;
    let calls_before = monitor.count("EVALSHA");
    let (recorded, lease) = store
        .record_results(&id, &[&last], 1000, Some(&request))
        .await
        .unwrap();
    assert!(
        matches!(recorded, Recorded::Batch { remaining: 0, .. }),
        "{recorded:?}"
    );
    let Some(SettledLease::Acquired(leased)) = lease else {
        panic!("the settling call did not acquire the synthesis lease");
    };
    monitor.catch_up().await;
    assert_eq!(
        monitor.count("EVALSHA") - calls_before,
        1,
        "recording the last result and leasing took more than one call: {:#?}",
        monitor.lines()
    );
    assert!(conn.exists::<_, bool>(&lease_key).await.unwrap());
    assert_eq!(leased.runs, Some(1));
    assert_eq!(leased.pending, 0);
    let settled = leased.settled.as_ref().expect("a small task's results");
    assert_eq!(settled.order, ["s0", "s1", "s2"]);
    assert_eq!(settled.results.len(), 3);
    assert!(leased
        .record
        .as_ref()
        .is_some_and(|record| record.total == 3));

    // A duplicate of the last result meanwhile finds the lease held.
    let (_, duplicate_lease) = store
        .record_results(&id, &[&last], 1000, Some(&request))
        .await
        .unwrap();
    assert!(matches!(duplicate_lease, Some(SettledLease::Held)));

    // Given back (the synthesis could not start): the run is not counted, and the next
    // duplicate acquires the lease afresh.
    leased.release_unstarted(&id, "synth").await;
    assert!(!conn.exists::<_, bool>(&lease_key).await.unwrap());
    let (_, again) = store
        .record_results(&id, &[&last], 1000, Some(&request))
        .await
        .unwrap();
    let Some(SettledLease::Acquired(again)) = again else {
        panic!("the lease was not free after it was released");
    };
    assert_eq!(again.runs, Some(1), "a given-back run stayed counted");
    again.lease.release().await.unwrap();

    // Without a lease request nothing is acquired.
    let (_, none) = store
        .record_results(&id, &[&last], 1000, None)
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(!conn.exists::<_, bool>(&lease_key).await.unwrap());
}

/// What a recording call said of each result, and how many subtasks it left pending.
fn statuses_and_remaining(recorded: Recorded) -> (Vec<ResultStatus>, u64) {
    match recorded {
        Recorded::Batch {
            statuses,
            remaining,
            ..
        } => (statuses, remaining),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_result_of_an_earlier_round_is_a_duplicate_once_its_subtask_is_sent_back() {
    let env = TestEnv::new("store-rounds").await;
    let store = store(&env).await;
    let id = format!("rounds-{}", uuid::Uuid::new_v4());
    running_task(&store, &id, 3).await;
    let lease_key = TaskKeys::new(&id).synth_lease();
    let request = synthesis_lease(&lease_key);
    let first = [result(&id, "s0"), result(&id, "s1"), result(&id, "s2")];
    let (_, lease) = store
        .record_results(&id, &first.iter().collect::<Vec<_>>(), 1000, Some(&request))
        .await
        .unwrap();
    let Some(SettledLease::Acquired(leased)) = lease else {
        panic!("the settling call did not acquire the synthesis lease");
    };
    // The review sends s2 back: round 2 re-opens it.
    let released = store
        .revise(&id, &leased.lease, &[entry("s2")], &[])
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(store.task(&id).await.unwrap().unwrap().round, 2);

    // The message that settled round 1, redelivered (its ack was lost to a crash), is a
    // duplicate: it must not settle the subtask sent back.
    let (statuses, remaining) = statuses_and_remaining(
        store
            .record_results(&id, &[&first[2]], 1000, None)
            .await
            .unwrap()
            .0,
    );
    assert_eq!(statuses, [ResultStatus::Duplicate]);
    assert_eq!(remaining, 1, "a round-1 result settled a round-2 subtask");

    // The result of the round-2 run is recorded.
    let again = ResultMessage {
        round: 2,
        ..result(&id, "s2")
    };
    let (statuses, remaining) = statuses_and_remaining(
        store
            .record_results(&id, &[&again], 1000, None)
            .await
            .unwrap()
            .0,
    );
    assert_eq!(statuses, [ResultStatus::New]);
    assert_eq!(remaining, 0);
    leased.lease.release().await.unwrap();
}

#[tokio::test]
async fn the_last_write_under_a_lease_releases_it_in_the_same_call() {
    let env = TestEnv::new("store-last-write-releases").await;
    let store = store(&env).await;
    let id = format!("last-write-releases-{}", uuid::Uuid::new_v4());
    let mut conn = env.redis().await;
    let keys = TaskKeys::new(&id);

    // Moving to running releases the plan lease (`running_task` releases it again afterwards, which
    // must then cost nothing). A first run loads the scripts, so that the count below is not
    // thrown off by a fresh server's script cache.
    running_task(&store, &format!("warm-up-{id}"), 1).await;
    let monitor = env.monitor_redis(&id).await;
    running_task(&store, &id, 2).await;
    monitor.catch_up().await;
    assert!(!conn.exists::<_, bool>(keys.plan_lease()).await.unwrap());
    let state: String = conn.hget(keys.task(), "state").await.unwrap();
    assert_eq!(state, "running");
    // Claim, plan, end of the planner run, running: four calls, no separate release; and
    // the entry in the index of recent tasks, in its own slot (docs/operations.md#recent-tasks).
    assert_eq!(index_calls(&monitor), 1, "{:#?}", monitor.lines());
    assert_eq!(
        monitor.count("EVALSHA") - index_calls(&monitor),
        4,
        "calls made for the plan: {:#?}",
        monitor.lines()
    );

    // Marking the outcome delivered ends the synthesis lease.
    let results = [result(&id, "s0"), result(&id, "s1")];
    let lease_key = keys.synth_lease();
    let (_, lease) = store
        .record_results(
            &id,
            &results.iter().collect::<Vec<_>>(),
            1000,
            Some(&synthesis_lease(&lease_key)),
        )
        .await
        .unwrap();
    let Some(SettledLease::Acquired(leased)) = lease else {
        panic!("no synthesis lease");
    };
    assert!(conn.exists::<_, bool>(&lease_key).await.unwrap());
    store
        .mark_delivered(&id, Some(&leased.lease))
        .await
        .unwrap();
    assert!(!conn.exists::<_, bool>(&lease_key).await.unwrap());
    let delivered: String = conn.hget(keys.task(), "delivered").await.unwrap();
    assert_eq!(delivered, "1");

    // A lease someone else acquired meanwhile is theirs: the late write leaves it alone.
    let _: () = conn.set(&lease_key, "someone-else").await.unwrap();
    leased.lease.release().await.unwrap();
    store.mark_delivered(&id, None).await.unwrap();
    let holder: String = conn.get(&lease_key).await.unwrap();
    assert_eq!(holder, "someone-else");
}

#[tokio::test]
async fn subtasks_of_a_task_arriving_together_share_one_liveness_lookup() {
    let env = TestEnv::new("store-watch").await;
    let store = store(&env).await;
    let shutdown = CancellationToken::new();
    let watch = TaskWatch::start(store.clone(), shutdown.clone());
    let id = format!("watch-{}", uuid::Uuid::new_v4());
    let monitor = env.monitor_redis(&id).await;
    let askers: Vec<_> = (0..8)
        .map(|_| {
            let watch = Arc::clone(&watch);
            let id = id.clone();
            tokio::spawn(async move { watch.is_live(&id, None).await.unwrap() })
        })
        .collect();
    for asker in askers {
        assert!(asker.await.unwrap(), "a task without outcome is live");
    }
    monitor.catch_up().await;
    assert_eq!(
        monitor.count("EXISTS"),
        1,
        "eight subtasks arriving together looked the task up {} times",
        monitor.count("EXISTS")
    );

    // A finished task is seen over once its knowledge is stale (a second at most).
    let mut conn = env.redis().await;
    let _: () = conn
        .set(TaskKeys::new(&id).outcome(), "done")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!watch.is_live(&id, None).await.unwrap());
    shutdown.cancel();
}

#[tokio::test]
async fn a_subtask_published_just_now_as_live_needs_no_liveness_lookup() {
    let env = TestEnv::new("store-watch-stamp").await;
    let store = store(&env).await;
    let shutdown = CancellationToken::new();
    let watch = TaskWatch::start(store.clone(), shutdown.clone());
    let id = format!("stamped-{}", uuid::Uuid::new_v4());
    let monitor = env.monitor_redis(&id).await;
    let mut conn = env.redis().await;
    let now = now_ms();

    // Stamped live a moment ago: taken as a lookup, even with the outcome already stored (a
    // second of staleness is the watch's promise either way).
    let _: () = conn
        .set(TaskKeys::new(&id).outcome(), "done")
        .await
        .unwrap();
    assert!(watch.is_live(&id, Some(now - 200)).await.unwrap());
    // A little ahead of this clock still counts (clocks a little apart).
    assert!(watch.is_live(&id, Some(now + 300)).await.unwrap());
    monitor.catch_up().await;
    assert_eq!(monitor.count("EXISTS"), 0, "fresh stamps made a lookup");

    // Stamps too old, or too far ahead to trust, are looked up, and the lookup wins.
    let old = format!("{id}-old");
    let ahead = format!("{id}-ahead");
    for task in [&old, &ahead] {
        let _: () = conn
            .set(TaskKeys::new(task).outcome(), "done")
            .await
            .unwrap();
    }
    assert!(!watch.is_live(&old, Some(now - 1500)).await.unwrap());
    assert!(!watch.is_live(&ahead, Some(now + 60_000)).await.unwrap());
    monitor.catch_up().await;
    assert_eq!(monitor.count("EXISTS"), 2);

    // A task known over stays over whatever a late message says.
    assert!(!watch.is_live(&old, Some(now_ms())).await.unwrap());
    // Once the stamp's second has passed, the task is looked up and found over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!watch.is_live(&id, None).await.unwrap());
    monitor.catch_up().await;
    assert_eq!(monitor.count("EXISTS"), 3);
    shutdown.cancel();
}

#[tokio::test]
async fn a_plan_made_before_the_claim_is_recorded_with_it_in_one_call() {
    let env = TestEnv::new("store-claim-planned").await;
    let store = store(&env).await;
    let mut conn = env.redis().await;
    let id = format!("claim-planned-{}", uuid::Uuid::new_v4());
    let keys = TaskKeys::new(&id);
    let entries: Vec<PlanEntry> = (0..3).map(|n| entry(&format!("s{n}"))).collect();
    claim_planned(&store, &format!("warm-up-{id}"), &entries).await;

    // Leftovers of an earlier task of this id (removed by hand) do not leak into the plan.
    let _: () = conn.sadd(keys.pending(), "stale").await.unwrap();
    let monitor = env.monitor_redis(&id).await;
    let Claim::Planned { lease, record } = claim_planned(&store, &id, &entries).await else {
        panic!("a new task with its plan was not claimed planned");
    };
    monitor.catch_up().await;
    assert_eq!(index_calls(&monitor), 1, "{:#?}", monitor.lines());
    assert_eq!(
        monitor.count("EVALSHA") - index_calls(&monitor),
        1,
        "claiming and recording the plan took more than one call: {:#?}",
        monitor.lines()
    );
    assert_eq!(record.total, 3);
    assert_eq!(record.wave_len, 3);
    let state: String = conn.hget(keys.task(), "state").await.unwrap();
    assert_eq!(state, "planned");
    // The definition it was planned with is recorded, for every subtask published later.
    assert_eq!(record.fingerprint.as_deref(), Some(FINGERPRINT));
    let stored = store.task(&id).await.unwrap().unwrap();
    assert_eq!(stored.fingerprint.as_deref(), Some(FINGERPRINT));
    let total: u64 = conn.hget(keys.task(), "total").await.unwrap();
    assert_eq!(total, 3);
    let order: Vec<String> = conn.lrange(keys.order(), 0, -1).await.unwrap();
    assert_eq!(order, ["s0", "s1", "s2"]);
    let mut pending: Vec<String> = conn.smembers(keys.pending()).await.unwrap();
    pending.sort();
    assert_eq!(pending, ["s0", "s1", "s2"]);
    assert!(conn.exists::<_, bool>(keys.plan_lease()).await.unwrap());
    // This planner run returned before anything was written: nothing is counted.
    let runs: Option<u64> = conn.hget(keys.starts(), "plan").await.unwrap();
    assert_eq!(runs, None);

    // A duplicate finds the task and changes nothing.
    let other: Vec<PlanEntry> = (0..5).map(|n| entry(&format!("d{n}"))).collect();
    let duplicate = claim_planned(&store, &id, &other).await;
    assert!(
        matches!(
            duplicate,
            Claim::Exists(chorus_shared::store::TaskState::Planned)
        ),
        "a duplicate was not told the task exists"
    );
    let total: u64 = conn.hget(keys.task(), "total").await.unwrap();
    assert_eq!(total, 3);

    // It runs and settles like any task.
    store.mark_running(&id, 3, &lease).await.unwrap();
    assert!(!conn.exists::<_, bool>(keys.plan_lease()).await.unwrap());
    let results = [result(&id, "s0"), result(&id, "s1"), result(&id, "s2")];
    let (recorded, _) = store
        .record_results(&id, &results.iter().collect::<Vec<_>>(), 1000, None)
        .await
        .unwrap();
    assert!(
        matches!(recorded, Recorded::Batch { remaining: 0, .. }),
        "{recorded:?}"
    );

    // With the plan lease of an earlier task of the id still held, the task is claimed but
    // not planned: the orchestrator plans it once that lease lapses.
    let held = format!("claim-held-{}", uuid::Uuid::new_v4());
    let held_keys = TaskKeys::new(&held);
    let _: () = conn.set(held_keys.plan_lease(), "earlier").await.unwrap();
    let claim = claim_planned(&store, &held, &entries).await;
    assert!(matches!(claim, Claim::New(None)), "a held lease was taken");
    let state: String = conn.hget(held_keys.task(), "state").await.unwrap();
    assert_eq!(state, "planning");
    assert!(!conn.exists::<_, bool>(held_keys.order()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steps_usage_is_counted_with_its_write_and_only_once() {
    use chorus_shared::{protocol::Outcome, usage::Usage};
    let env = TestEnv::new("storeusage").await;
    let store = store(&env).await;
    let used = |model: &str, prompt: u64, cost: Option<f64>| Usage {
        model: model.to_owned(),
        prompt_tokens: prompt,
        completion_tokens: 1,
        calls: 1,
        cost,
        ..Usage::default()
    };
    // A plan too large for one call: its usage goes with the last chunk (mark_planned).
    let id = "usage-chunks";
    let options = protocol::encode(&TaskOptions::default().resolve().unwrap()).unwrap();
    let input = protocol::encode(&()).unwrap();
    let submission = Submission {
        kind: "range-sum",
        options: &options,
        input: &input,
        parent: None,
        fingerprint: Some(FINGERPRINT),
    };
    let Claim::New(Some(Planning { lease, .. })) =
        store.claim(id, None, submission, LEASE).await.unwrap()
    else {
        panic!("a new task's claim acquires its plan lease");
    };
    let entries: Vec<PlanEntry> = (0..1_001).map(|n| entry(&format!("s{n}"))).collect();
    let wave = graph::first_wave(&entries, 0);
    let plan_usage = [used("planner", 10, Some(0.5))];
    store
        .record_plan(id, &lease, &entries, &wave, 0, &plan_usage)
        .await
        .unwrap();
    // A second write (the task is planned already) is fenced and counts nothing.
    assert!(store
        .record_plan(id, &lease, &entries, &wave, 0, &plan_usage)
        .await
        .is_err());
    lease.release().await.unwrap();
    let record = store.task(id).await.unwrap().unwrap();
    assert_eq!(record.tokens["planner"].prompt, 10);
    assert_eq!(record.tokens_used, 11);

    // The outcome's usage counts when that outcome is stored, not when a later one is refused.
    let outcome = Outcome::rejected(id, "stop");
    let synthesis_usage = [used("writer", 100, None)];
    for _ in 0..2 {
        store
            .store_outcome(&outcome, &synthesis_usage, LEASE, None)
            .await
            .unwrap();
    }
    let record = store.task(id).await.unwrap().unwrap();
    assert_eq!(record.tokens["writer"].prompt, 100);
    assert_eq!(record.tokens["writer"].calls, 1);
    assert_eq!(record.tokens_used, 112);
    assert_eq!(record.cost, Some(0.5));
}

/// The script calls `monitor` saw that write the index of recent tasks (one per claim and per
/// outcome, beside the task's own scripts: the index is in another Cluster slot).
fn index_calls(monitor: &chorus_tests::RedisMonitor) -> usize {
    monitor
        .lines()
        .iter()
        .filter(|line| line.contains(r#""EVALSHA""#) && line.contains(r#""chorus:index:{tasks}""#))
        .count()
}
