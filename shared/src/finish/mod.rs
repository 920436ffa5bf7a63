//! Moving a task along after planning and ending it: publishing what results release, review
//! rounds and synthesis under a lease, cancellation and deadlines, storing the outcome once,
//! and delivering it to every waiter, to `chorus.events`, to the parent of a child task and (as
//! cancellations) to the children of a finished one. Every step is safe to
//! repeat, so a redelivered message can always finish what a crashed process started.
//!
//! # Layout
//! - `decide`: what happens to a task (its status, whether its kind's code runs, the
//!   partial-failure policy, deadlines), as plain functions with no I/O — start here.
//! - `synthesis`: the [`Finisher`]'s way in (a settled task), its synthesis lease, and the
//!   kind's synthesis run under it.
//! - `review`: review rounds: the kind's review, and recording the next round.
//! - `outbox`: publishing released subtasks (by results, a review round or the plan) and
//!   those a crashed process released but did not publish.
//! - `deliver`: storing the outcome once and delivering it to waiters, events, the parent task
//!   and the children.
//! - `control`: cancellations, deadline timers and other stops.
//! - `handover`: leaving a settled task to a live synthesizer with its kind's definition when
//!   this process lacks it (a kind being rolled out).
//!
//! Replies to submitters (the AMQP messages) are in [`crate::amqp`].

use std::{sync::Arc, time::Duration};

use crate::{
    amqp::Publisher,
    config::{LimitArgs, OutcomeArgs},
    kinds::Registry,
    services::Directory,
    store::Store,
};

mod control;
mod decide;
mod deliver;
mod handover;
mod outbox;
mod review;
mod synthesis;

pub use control::arm_deadline;

/// A settled task of up to this many results has them read with its lease, one round trip less
/// on the way to its outcome; larger ones are streamed from Redis in chunks.
const RESULTS_WITH_LEASE: usize = 1000;

/// Name under which synthesis runs are counted (see [`Store::begin_run`]).
const SYNTH_RUN: &str = "synth";

/// Pause between looks at a task whose lease another process holds.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// Everything needed to end tasks.
#[derive(Clone)]
pub struct Finisher {
    /// Redis.
    pub store: Store,
    /// Confirm-mode publisher.
    pub publisher: Publisher,
    /// Kinds, for their synthesizers.
    pub registry: Registry,
    /// How long outcomes stay in Redis.
    pub outcome_ttl: Duration,
    /// Lease on synthesizing one task.
    pub lease: Duration,
    /// Synthesis runs that may start without finishing (crashing their process) before the
    /// task is failed.
    pub max_runs: u64,
    /// Largest message body the services accept.
    pub max_message_bytes: usize,
    /// The other live services' announcements, when this process announces itself: a task of
    /// a kind this process lacks (or has another definition of) is left to a live synthesizer
    /// that has it (`handover.rs`).
    pub directory: Option<Arc<Directory>>,
}

impl Finisher {
    /// A finisher with the outcome and poison settings of a service's flags.
    pub fn new(
        store: Store,
        publisher: Publisher,
        registry: Registry,
        outcomes: &OutcomeArgs,
        limits: &LimitArgs,
    ) -> Self {
        Self {
            store,
            publisher,
            registry,
            outcome_ttl: outcomes.outcome_ttl(),
            lease: outcomes.lease(),
            max_runs: limits.max_deliveries,
            max_message_bytes: limits.max_message_bytes(),
            directory: None,
        }
    }

    /// This finisher, leaving tasks it lacks the definition of to the live synthesizers of
    /// `directory` (docs/operations.md, "Rolling out a kind").
    #[must_use]
    pub fn with_directory(mut self, directory: Arc<Directory>) -> Self {
        self.directory = Some(directory);
        self
    }
}
