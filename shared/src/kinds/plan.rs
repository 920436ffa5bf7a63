//! What a planner, a spawning handler and a review return: [`Plan`], a list of [`Planned`]
//! subtasks (each running [`Work`]: the kind's handler or a child task), and a [`Review`]'s
//! verdict.

use serde::Serialize;

use super::{codec, KindError};
use crate::protocol::{ChildSpec, TaskOptions};

/// One subtask as a planner, a spawning handler or a review returns it: the kind's subtask plus
/// where it runs and what it waits for.
#[derive(Clone, Debug)]
pub struct Planned<S> {
    /// Subtask id; planners that give none get the position in the plan (`"0"`, `"1"`, ...).
    pub id: Option<String>,
    /// Worker type that runs it; none means `default`.
    pub worker_type: Option<String>,
    /// Subtasks that must succeed first; their outputs reach the handler as context.
    pub depends_on: Vec<String>,
    /// What to run: the kind's subtask, or a child task of another kind.
    pub work: Work<S>,
}

/// What a planned subtask runs.
#[derive(Clone, Debug)]
pub enum Work<S> {
    /// The kind's handler, on this subtask.
    Handler(S),
    /// A whole task of another kind; its outcome becomes this subtask's result (its output
    /// must decode as the parent kind's `Output`).
    Child(ChildSpec),
}

impl<S> Planned<S> {
    /// A subtask for the kind's handler, with defaults: position id, `default` worker type.
    pub fn new(subtask: S) -> Self {
        Self {
            id: None,
            worker_type: None,
            depends_on: Vec::new(),
            work: Work::Handler(subtask),
        }
    }

    /// A child task of kind `kind` with `input` (any serializable value).
    ///
    /// # Errors
    /// `input` has no MessagePack form.
    pub fn child<I: Serialize>(
        kind: impl Into<String>,
        input: &I,
        options: Option<TaskOptions>,
    ) -> Result<Self, KindError> {
        let input = codec::encode_value(input, "child input")?;
        Ok(Self {
            id: None,
            worker_type: None,
            depends_on: Vec::new(),
            work: Work::Child(ChildSpec {
                kind: kind.into(),
                input,
                options,
            }),
        })
    }

    /// Names the subtask (ids must be unique within the task).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Routes the subtask to workers of `worker_type`.
    #[must_use]
    pub fn on(mut self, worker_type: impl Into<String>) -> Self {
        self.worker_type = Some(worker_type.into());
        self
    }

    /// Makes the subtask wait until every subtask in `ids` succeeded.
    #[must_use]
    pub fn after<I: Into<String>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        self.depends_on.extend(ids.into_iter().map(Into::into));
        self
    }
}

/// What a planner returns: subtasks in plan order.
#[derive(Clone, Debug)]
pub struct Plan<S>(pub Vec<Planned<S>>);

impl<S> Plan<S> {
    /// The handler subtasks of the plan, in order (child tasks left out).
    pub fn into_subtasks(self) -> Vec<S> {
        self.0
            .into_iter()
            .filter_map(|planned| match planned.work {
                Work::Handler(subtask) => Some(subtask),
                Work::Child(_) => None,
            })
            .collect()
    }
}

impl<S> From<Vec<S>> for Plan<S> {
    fn from(subtasks: Vec<S>) -> Self {
        Self(subtasks.into_iter().map(Planned::new).collect())
    }
}

impl<S> From<Vec<Planned<S>>> for Plan<S> {
    fn from(subtasks: Vec<Planned<S>>) -> Self {
        Self(subtasks)
    }
}

/// What a review decides after a round.
#[derive(Clone, Debug)]
pub enum Review<S> {
    /// The outputs are final: synthesize them.
    Accept,
    /// Run another round: subtasks with an existing id are redone with the new subtask (which
    /// carries the reviewer's feedback), new ids are added. Outputs of the others are kept.
    Revise(Vec<Planned<S>>),
}
