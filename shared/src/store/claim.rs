//! Claiming a task id: registering the submitter as a waiter and creating the task if the id is
//! new, with its plan lease — and, for a plan made before the claim, recording that plan in the
//! same call ([`Store::claim_planned`]).

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{
    codec::decode_outcome,
    keys::Key,
    lease::{lease_ttl_ms, new_lease_token, Lease},
    plan::PlanLayout,
    record::{TaskRecord, TaskState},
    results::add_usage_block,
    run::PLAN_RUN,
    Store, TaskKeys, CHUNK,
};
use crate::{
    admin::tasks::LIVE,
    clock::now_ms,
    error::StoreError,
    graph::FirstWave,
    protocol::{self, Outcome, PlanEntry, ReplyTarget},
    usage::Usage,
};

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/claim.lua"),
        include_str!("lua/claim.lua")
    ))
});
static CLAIM_PLANNED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/plan.lua"),
        include_str!("lua/prelude/claim.lua"),
        include_str!("lua/prelude/usage.lua"),
        include_str!("lua/claim_planned.lua")
    ))
});

/// What the claim of a task id found.
pub enum Claim {
    /// The task already has an outcome (a duplicate submission after the end).
    Finished(Outcome),
    /// The id was new: the caller plans the task, straight away when the plan lease came with
    /// the claim (it does unless a lease of an earlier task of that id is still held).
    New(Option<Planning>),
    /// The task exists and is in this state (a duplicate, or a redelivery after a crash).
    Exists(TaskState),
    /// A cancel came before the claim (kept by [`Store::keep_cancel`]), with the canceller's
    /// reason if any: the task exists, `planning`, without a plan lease, and the caller stops it
    /// `cancelled` instead of planning it. Every later claim of the task says so too, until its
    /// outcome is stored.
    Cancelled(Option<String>),
    /// The id was new and the plan made before the claim is recorded with it
    /// ([`Store::claim_planned`]): the caller publishes the first wave under the plan lease.
    Planned {
        /// The plan lease, held.
        lease: Lease,
        /// The task as the claim created it, `planned`.
        record: TaskRecord,
    },
}

/// What a submission asks for, as the claim stores it.
#[derive(Clone, Copy)]
pub struct Submission<'a> {
    /// Kind name.
    pub kind: &'a str,
    /// Encoded [`protocol::ResolvedOptions`].
    pub options: &'a [u8],
    /// Encoded task input.
    pub input: &'a [u8],
    /// The parent subtask of a child task.
    pub parent: Option<&'a protocol::ParentRef>,
    /// [`crate::kinds::DynKind::fingerprint`] of the definition the task is planned with
    /// (`None` when this process lacks the kind); every subtask message carries it, so that a
    /// worker with another definition leaves it to one with this one (docs/operations.md, "Rolling
    /// out a kind").
    pub fingerprint: Option<&'a str>,
}

/// A new task claimed together with its plan lease, its planner run counted ([`PLAN_RUN`]).
pub struct Planning {
    /// The plan lease, held.
    pub lease: Lease,
    /// Planner runs started and not ended, this one included.
    pub runs: u64,
    /// The task as the claim created it.
    pub record: TaskRecord,
}

/// What a claim stores beside the submission, encoded.
struct ClaimArgs {
    waiter: Vec<u8>,
    parent: Vec<u8>,
    created_ms: u64,
    token: String,
    ttl_ms: u64,
}

impl ClaimArgs {
    fn new(
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
    ) -> Result<Self, StoreError> {
        let encode = |value: Result<Vec<u8>, _>| {
            value.map_err(|e: crate::error::ProtocolError| StoreError::Corrupt(e.to_string()))
        };
        Ok(Self {
            waiter: match waiter {
                Some(target) => encode(protocol::encode(target))?,
                None => Vec::new(),
            },
            parent: match submission.parent {
                Some(parent) => encode(protocol::encode(parent))?,
                None => Vec::new(),
            },
            created_ms: now_ms(),
            token: new_lease_token(),
            ttl_ms: lease_ttl_ms(lease_ttl),
        })
    }

    /// The ARGV both claim scripts start with: waiter, kind, options, input, created ms,
    /// parent, lease token, lease ttl ms, fingerprint (empty for none).
    fn add_to(&self, call: &mut redis::ScriptInvocation<'_>, submission: Submission<'_>) {
        call.arg(&self.waiter)
            .arg(submission.kind)
            .arg(submission.options)
            .arg(submission.input)
            .arg(self.created_ms)
            .arg(&self.parent)
            .arg(&self.token)
            .arg(self.ttl_ms)
            .arg(submission.fingerprint.unwrap_or(""));
    }

    /// The task as a claim creates it, `planning`.
    fn record(&self, submission: Submission<'_>) -> TaskRecord {
        TaskRecord {
            state: TaskState::Planning,
            kind: submission.kind.to_owned(),
            options: submission.options.to_vec(),
            input: submission.input.to_vec(),
            total: 0,
            published: 0,
            succeeded: 0,
            failed: 0,
            retries: 0,
            duplicates: 0,
            created_ms: self.created_ms,
            delivered: false,
            skipped: 0,
            round: 1,
            wave_is_order: true,
            wave_len: 0,
            parent: Some(self.parent.clone()).filter(|bytes| !bytes.is_empty()),
            tokens: std::collections::BTreeMap::new(),
            tokens_used: 0,
            cost: None,
            fingerprint: submission.fingerprint.map(str::to_owned),
        }
    }
}

/// The claim replies other than a new task: `finished` with the encoded outcome, `cancelled`
/// with the kept cancel's reason (empty for none), or `exists` with the task's state.
///
/// # Errors
/// The outcome or the state is not one Chorus writes ([`StoreError::Corrupt`]).
pub(super) fn claim_reply(status: &str, value: &[u8]) -> Result<Claim, StoreError> {
    match status {
        "finished" => Ok(Claim::Finished(decode_outcome(value)?)),
        "cancelled" => Ok(Claim::Cancelled(
            Some(String::from_utf8_lossy(value).into_owned()).filter(|reason| !reason.is_empty()),
        )),
        _ => Ok(Claim::Exists(TaskState::parse(&String::from_utf8_lossy(
            value,
        ))?)),
    }
}

impl Store {
    /// Registers `waiter` for task `id` and creates the task if the id is new, taking its plan
    /// lease (held for `lease_ttl`, renewed while held) and counting its planner run.
    ///
    /// # Errors
    /// Redis fails, or holds an outcome that does not decode.
    pub async fn claim(
        &self,
        id: &str,
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let keys = TaskKeys::new(id);
        let args = ClaimArgs::new(waiter, submission, lease_ttl)?;
        let mut call = CLAIM.prepare_invoke();
        call.key(keys.all(&[
            Key::Task,
            Key::Outcome,
            Key::Waiters,
            Key::PlanLease,
            Key::Starts,
            Key::Cancel,
        ]));
        args.add_to(&mut call, submission);
        call.arg(PLAN_RUN);
        let (status, value): (String, Vec<u8>) = call.invoke_async(&mut self.conn()).await?;
        if status == "new" || status == "cancelled" {
            self.index_task_in_background(id, submission.kind, LIVE, args.created_ms, None);
        }
        match status.as_str() {
            "new" => {
                let runs = String::from_utf8_lossy(&value).parse::<u64>().ok();
                Ok(Claim::New(runs.map(|runs| Planning {
                    lease: self.hold_lease(&keys.plan_lease(), args.token.clone(), args.ttl_ms),
                    runs,
                    record: args.record(submission),
                })))
            }
            _ => claim_reply(&status, &value),
        }
    }

    /// Claims a new task whose plan was made before the claim (a first delivery) and records
    /// that plan of at most [`CHUNK`] entries in the same call, acquiring the plan lease; no
    /// planner run is counted, since this one returned. Otherwise as [`Store::claim`], except
    /// that a new task whose plan lease is still held by an earlier task of the id comes back
    /// as `Claim::New(None)`, claimed but not planned. `usage` (what the planner's model calls
    /// used) is counted on the task's record with the plan, and only when the plan is written.
    ///
    /// # Errors
    /// Redis fails, an entry does not encode, or the plan has more than [`CHUNK`] entries.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_planned(
        &self,
        id: &str,
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
        entries: &[PlanEntry],
        wave: &FirstWave,
        cap: u32,
        usage: &[Usage],
    ) -> Result<Claim, StoreError> {
        if entries.len() > CHUNK {
            return Err(StoreError::Corrupt(format!(
                "task {id}: a plan of {} entries is recorded in chunks, not with its claim",
                entries.len()
            )));
        }
        let keys = TaskKeys::new(id);
        let args = ClaimArgs::new(waiter, submission, lease_ttl)?;
        let layout = PlanLayout::new(entries, wave, cap);
        let mut call = CLAIM_PLANNED.prepare_invoke();
        call.key(keys.whole_plan())
            .key(keys.outcome())
            .key(keys.waiters())
            .key(keys.cancel())
            .key(keys.cleared_by_plan());
        args.add_to(&mut call, submission);
        add_usage_block(&mut call, usage);
        layout.add_whole(&mut call)?;
        let (status, value): (String, Vec<u8>) = call.invoke_async(&mut self.conn()).await?;
        if matches!(status.as_str(), "planned" | "new" | "cancelled") {
            self.index_task_in_background(id, submission.kind, LIVE, args.created_ms, None);
        }
        match status.as_str() {
            "planned" => {
                let mut record = args.record(submission);
                record.state = TaskState::Planned;
                record.total = entries.len() as u64;
                record.wave_len = wave.release.len() as u64;
                record.wave_is_order = layout.wave_is_order();
                Ok(Claim::Planned {
                    lease: self.hold_lease(&keys.plan_lease(), args.token, args.ttl_ms),
                    record,
                })
            }
            "new" => Ok(Claim::New(None)),
            _ => claim_reply(&status, &value),
        }
    }
}
