//! [`Kind`]: the trait a kind author implements — planner, handler, optional review and
//! synthesizer of one domain, over the author's own types.

use std::future::Future;

use serde::{de::DeserializeOwned, Serialize};

use super::{HandlerContext, KindError, Plan, Review};

/// A kind of task: planner, handler and synthesizer of one domain.
///
/// `plan`, `review` and `synthesize` run on a blocking thread, so they may read files, unless
/// the kind sets [`Kind::INLINE`]; `handle` is async and runs under the subtask's timeout (it is
/// dropped when the timeout passes).
pub trait Kind: Send + Sync + 'static {
    /// The task input, decoded from the request's `input` by the strict rules of
    /// [`protocol::strict`](crate::protocol::strict): a struct only from a map, no unknown
    /// field (docs/protocol.md, "Decoding rules").
    ///
    /// Avoid `#[serde(flatten)]`, `#[serde(untagged)]` and internally tagged enums
    /// (`#[serde(tag = "...")]`) in this type: serde buffers what they read and deserializes it
    /// with its own lenient deserializer, where a struct may come from an array again and a
    /// flattened struct ignores unknown fields (docs/security.md, "Known gaps"). Externally
    /// tagged enums (serde's default) stay strict; otherwise check the decoded value yourself.
    type Input: DeserializeOwned + Send + Sync;
    /// One unit of work.
    type Subtask: Serialize + DeserializeOwned + Send;
    /// What a handler returns for one subtask.
    type Output: Serialize + DeserializeOwned + Send;
    /// The synthesized output of the task.
    type Final: Serialize;

    /// Set when `plan`, `review` and `synthesize` only compute (no file, network, lock or
    /// sleep). Their small calls then run on the orchestrator's and synthesizer's own thread
    /// instead of going to the blocking pool and back, which takes two thread wake-ups (0.05 to
    /// 0.1 ms a call on a busy machine): reviews and syntheses of at most
    /// [`INLINE_OUTPUTS`](super::INLINE_OUTPUTS) outputs, and plans that [`Kind::small_plan`]
    /// calls small. While such a call runs, the service's other work waits.
    const INLINE: bool = false;

    /// For an [`Kind::INLINE`] kind: whether planning `input` is small work (well under a
    /// millisecond). A planner that can make thousands of subtasks answers from the input.
    fn small_plan(&self, input: &Self::Input) -> bool {
        let _ = input;
        true
    }

    /// Name that tasks give in `kind`.
    fn name(&self) -> &str;

    /// Breaks a task into subtasks; their number, ids, worker types and dependencies are up to
    /// the input. A `Vec<Self::Subtask>` converts with `.into()`.
    ///
    /// # Errors
    /// An input the kind cannot run: the task is `rejected` with this message.
    fn plan(&self, input: &Self::Input) -> Result<Plan<Self::Subtask>, KindError>;

    /// Runs one subtask, as a task on the worker's async runtime (one thread unless the worker
    /// runs with `--threads 0`), which also carries the worker's AMQP I/O and its other
    /// handlers: long computation and blocking calls belong in `tokio::task::spawn_blocking`, so
    /// the runtime stays free to move messages.
    ///
    /// # Errors
    /// The attempt failed; retryable errors are retried until `max_attempts`.
    fn handle(
        &self,
        subtask: Self::Subtask,
        context: HandlerContext,
    ) -> impl Future<Output = Result<Self::Output, KindError>> + Send;

    /// Combines the outputs of the successful subtasks (all of them, unless `on_failure` is
    /// `continue` and some failed), in plan order.
    ///
    /// # Errors
    /// The task then fails with this message.
    fn synthesize(
        &self,
        input: &Self::Input,
        outputs: Vec<(String, Self::Output)>,
    ) -> Result<Self::Final, KindError>;

    /// Looks at the outputs after round `round` (1 for the first) and accepts them or sends
    /// subtasks back for another round. Called only while `round < options.max_rounds`; the
    /// default accepts at once.
    ///
    /// # Errors
    /// The task then fails with this message.
    fn review(
        &self,
        input: &Self::Input,
        outputs: &[(String, Self::Output)],
        round: u32,
    ) -> Result<Review<Self::Subtask>, KindError> {
        let _ = (input, outputs, round);
        Ok(Review::Accept)
    }

    /// Names this definition of the kind, as services announce it (docs/operations.md, "Rolling
    /// out a kind"): a worker given a subtask planned with another fingerprint leaves it to a
    /// live worker with that one. The default, `rust:<name>:<Chorus version>`, changes with
    /// every Chorus release; override it (say `rust:primes:2`) when you ship a changed
    /// definition of your kind with the same Chorus version.
    fn fingerprint(&self) -> String {
        rust_fingerprint(self.name())
    }
}

/// The default [`Kind::fingerprint`] of a kind called `name`: `rust:<name>:<Chorus version>`.
pub fn rust_fingerprint(name: &str) -> String {
    format!("rust:{name}:{}", env!("CARGO_PKG_VERSION"))
}
