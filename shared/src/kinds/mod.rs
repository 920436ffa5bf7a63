//! Kinds: what a task does, as a Rust API. A kind plans a task into subtasks, handles one
//! subtask, and synthesizes the results; the [`Registry`] maps kind names to kinds and is shared
//! by all three services.
//!
//! # Writing a kind: where to start
//! - [`Kind`] (`kind.rs`): the trait to implement, with your own input, subtask, output and
//!   final types.
//! - [`Plan`], [`Planned`], [`Work`], [`Review`] (`plan.rs`): what a planner, a spawning handler
//!   and a review return: subtasks with ids, worker types, dependencies, or child tasks.
//! - [`HandlerContext`] (`context.rs`): what a handler knows about its attempt (dependencies'
//!   outputs, cancellation) and how it spawns more subtasks.
//! - [`KindError`] (`error.rs`): a failure of the kind's code, retryable or fatal.
//! - [`Registry`] (`registry.rs`): register the kind next to the built-ins, then hand the
//!   registry to each service's `run`.
//! - [`range_sum`], [`report`], [`wordfreq`]: the built-in kinds, to read as examples;
//!   `examples/custom-kind` is a complete binary with a kind of its own.
//!
//! # Internals (`erased.rs`)
//! [`DynKind`], [`to_entries`], [`spawned_entries`], [`run_kind_code`], [`panic_text`],
//! [`panic_message`], [`INLINE_OUTPUTS`] and [`sort_by_subtask_id`] are used by the services,
//! not by kind authors: the registry erases each kind's types to MessagePack bytes so the
//! services never need to know them (`codec.rs` holds the encoding and decoding with the
//! errors a kind's code sees). [`Spawned`] is what the worker reads back of a handler's
//! [`HandlerContext::spawn`] calls.

pub mod file;
pub mod range_sum;
pub mod report;
pub mod wordfreq;

mod codec;
mod context;
mod erased;
mod error;
mod kind;
mod plan;
mod registry;
mod retry;

pub use context::{HandlerContext, Spawned};
pub use error::KindError;
pub use kind::Kind;
pub use plan::{Plan, Planned, Review, Work};
pub use registry::Registry;
pub use retry::{run_kind_code_retrying, KIND_CODE_ATTEMPTS, MAX_KIND_CODE_WAIT};

// Used by the services, not by kind authors.
pub use erased::{
    panic_message, panic_text, run_kind_code, sort_by_subtask_id, spawned_entries, to_entries,
    DynKind, TaskView, INLINE_OUTPUTS,
};
