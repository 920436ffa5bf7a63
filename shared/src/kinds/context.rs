//! [`HandlerContext`]: what a handler knows about the attempt it runs (dependencies' outputs,
//! cancellation, the usage meter of its model calls), and [`Spawned`], the subtasks it adds to
//! its task.

use std::sync::{Arc, Mutex};

use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;
use tokio_util::sync::CancellationToken;

use super::{codec, KindError, Planned};
use crate::usage::UsageMeter;

/// Subtasks a handler spawned during its attempt, collected by the worker when it returns.
#[derive(Clone, Debug, Default)]
pub struct Spawned(Arc<Mutex<Vec<Planned<ByteBuf>>>>);

impl Spawned {
    /// Takes what was spawned.
    pub fn take(&self) -> Vec<Planned<ByteBuf>> {
        // The lock is held only for one push or take, so even a poisoned list is whole.
        match self.0.lock() {
            Ok(mut spawned) => std::mem::take(&mut *spawned),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    fn push(&self, planned: Planned<ByteBuf>) {
        match self.0.lock() {
            Ok(mut spawned) => spawned.push(planned),
            Err(poisoned) => poisoned.into_inner().push(planned),
        }
    }
}

/// What a handler knows about the attempt it runs, and what it can do besides returning.
#[derive(Clone, Debug, Default)]
pub struct HandlerContext {
    /// Task id.
    pub task: String,
    /// Subtask id.
    pub subtask: String,
    /// Kind name of the task.
    pub kind: String,
    /// Worker type the subtask was routed to (`default` unless its planner chose another).
    pub worker_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The most this attempt may take: the subtask's timeout, or what is left before the
    /// task's deadline when that comes first (the worker drops the attempt then). `None` when
    /// unknown (a handler run outside a worker).
    pub time_limit: Option<std::time::Duration>,
    /// Spawn depth: 0 for planned subtasks.
    pub depth: u32,
    /// Encoded outputs of the subtasks this one depends on, in `depends_on` order.
    pub dependencies: Vec<(String, ByteBuf)>,
    /// Cancelled when the task is cancelled, fails or passes its deadline.
    pub cancel: CancellationToken,
    /// Subtasks spawned so far by this attempt.
    pub spawned: Spawned,
    /// What this attempt's model calls used: a handler (or the step it runs) records each
    /// call's usage here as soon as it is paid, failed attempts included, and the worker sends
    /// it with the subtask's result (docs/kinds.md#usage).
    pub usage: UsageMeter,
    /// The task's token budget as the worker read it before the attempt (this subtask's earlier
    /// attempts counted in `used`); `None` without `max_tokens`. A kinds-file step gets it in its
    /// request (docs/kinds.md#budget).
    pub budget: Option<crate::usage::Budget>,
}

impl HandlerContext {
    /// Outputs of the dependencies, decoded as `T` (usually the kind's `Output`).
    ///
    /// # Errors
    /// An output that does not decode as `T`.
    pub fn dependency_outputs<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, KindError> {
        codec::decode_outputs(
            self.dependencies.iter().map(|(id, bytes)| (id, &bytes[..])),
            "dependency",
        )
    }

    /// Adds a subtask to the task, recorded with this attempt's result (only the attempt whose
    /// result is recorded spawns anything). Without an id it gets `<this id>.<n>`, `n`
    /// counting this attempt's spawns from 0.
    ///
    /// # Errors
    /// The subtask has no MessagePack form.
    pub fn spawn<S: Serialize>(&self, planned: Planned<S>) -> Result<(), KindError> {
        self.spawned
            .push(codec::encode_planned(planned, "spawned subtask")?);
        Ok(())
    }

    /// Whether the task was cancelled (or failed, or passed its deadline) meanwhile.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests;
