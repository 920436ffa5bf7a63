//! Used by the services, not by kind authors: a [`Kind`] with its types erased to MessagePack
//! bytes ([`DynKind`]), the conversion of planned subtasks to wire plan entries, and the running
//! of a kind's plan, review or synthesis with its panics caught.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_bytes::ByteBuf;

use super::{codec, HandlerContext, Kind, KindError, Planned, Review, Work};
use crate::protocol::{self, PlanEntry, ResolvedOptions};

/// The task a kind's plan, review or synthesis works for: what a step defined in a kinds file
/// is told about it besides its input (docs/kinds.md). Rust kinds ([`Kind`]) ignore it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// The task's options with every default applied.
    pub options: ResolvedOptions,
    /// Where a plan, review or synthesis step records its model calls' usage
    /// (docs/kinds.md#usage); the service takes it when the step returns.
    pub usage: crate::usage::UsageMeter,
    /// The task's token budget as it stood when the service read the task (`None` without
    /// `max_tokens`); a kinds-file step gets it in its request, counting `usage` on top.
    pub budget: Option<crate::usage::Budget>,
    /// For a review: the plan entries of the round's reviewed subtasks (what a review that
    /// sends work back builds the new input from); empty for a plan or a synthesis.
    pub subtasks: Vec<PlanEntry>,
}

/// A kind with its types erased to MessagePack bytes, as the services use it.
///
/// Used by the services, not by kind authors: a kind author implements [`Kind`], and
/// [`Registry::with`](super::Registry::with) erases it.
pub trait DynKind: Send + Sync {
    /// Kind name.
    fn name(&self) -> &str;

    /// [`Kind::INLINE`].
    fn inline(&self) -> bool;

    /// Whether planning the encoded `input` may run on the service's own thread:
    /// [`Kind::INLINE`] and [`Kind::small_plan`] (`false` for an input that does not decode;
    /// the planner's own call reports that).
    fn inline_plan(&self, input: &[u8]) -> bool;

    /// Plans `task` from its encoded input; returns the plan's entries.
    ///
    /// # Errors
    /// The input does not decode or the planner refuses it.
    fn plan(&self, task: &TaskView, input: &[u8]) -> Result<Vec<PlanEntry>, KindError>;

    /// Reviews the encoded outputs after `round`; `Some` entries to redo or add, `None` to
    /// accept.
    ///
    /// # Errors
    /// Something does not decode, or the review fails.
    fn review(
        &self,
        task: &TaskView,
        input: &[u8],
        outputs: &[(String, Vec<u8>)],
        round: u32,
    ) -> Result<Option<Vec<PlanEntry>>, KindError>;

    /// Handles an encoded subtask; returns the encoded output.
    fn handle(
        &self,
        payload: &[u8],
        context: HandlerContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, KindError>>;

    /// Synthesizes `task` from the encoded input and encoded outputs (in plan order);
    /// `failures` are the `(subtask id, error)` of the subtasks that failed (`on_failure:
    /// continue`), which only kinds-file steps are told about.
    ///
    /// # Errors
    /// Something does not decode, or the synthesizer fails.
    fn synthesize(
        &self,
        task: &TaskView,
        input: &[u8],
        outputs: Vec<(String, Vec<u8>)>,
        failures: &[(String, String)],
    ) -> Result<rmpv::Value, KindError>;

    /// Whether its plan, review or synthesis may fail for a while and then work (it calls an
    /// external step: a process, an HTTP endpoint, a model), so a retryable failure is worth
    /// running again ([`super::run_kind_code_retrying`]). Default: `false` (Rust code).
    fn calls_out(&self) -> bool {
        false
    }

    /// Names this definition of the kind, as the services announce it: two services whose
    /// fingerprints of a kind differ run different code for it (docs/operations.md, "Rolling
    /// out a kind"). Default: `rust:<name>:<Chorus version>` ([`super::kind::rust_fingerprint`]).
    fn fingerprint(&self) -> String {
        super::kind::rust_fingerprint(self.name())
    }

    /// The kind's steps for `chorus kinds`: `(step, what runs it)` lines, empty for a Rust
    /// kind (its steps are its code).
    fn steps(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A line about the kind for `chorus kinds`, if it has one.
    fn description(&self) -> Option<&str> {
        None
    }
}

/// `kind` behind the [`DynKind`] the registry holds.
pub(super) fn erase<K: Kind>(kind: K) -> Arc<dyn DynKind> {
    Arc::new(Erased(Arc::new(kind)))
}

/// Spawn depth of what a planner or a review returns; what handlers spawn is deeper.
const PLANNED_DEPTH: u32 = 0;

/// A kind seen through [`DynKind`]; the `Arc` lets a handler's future outlive the borrow.
struct Erased<K>(Arc<K>);

/// `(id, bytes)` pairs as [`codec::decode_outputs`] takes them.
fn borrowed(outputs: &[(String, Vec<u8>)]) -> impl Iterator<Item = (&String, &[u8])> {
    outputs.iter().map(|(id, bytes)| (id, &bytes[..]))
}

impl<K: Kind> DynKind for Erased<K> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn inline(&self) -> bool {
        K::INLINE
    }

    fn inline_plan(&self, input: &[u8]) -> bool {
        K::INLINE
            && codec::decode_input::<K::Input>(input).is_ok_and(|input| self.0.small_plan(&input))
    }

    fn plan(&self, _task: &TaskView, input: &[u8]) -> Result<Vec<PlanEntry>, KindError> {
        let input: K::Input = codec::decode_input(input)?;
        to_entries(self.0.plan(&input)?.0, "", PLANNED_DEPTH)
    }

    fn review(
        &self,
        _task: &TaskView,
        input: &[u8],
        outputs: &[(String, Vec<u8>)],
        round: u32,
    ) -> Result<Option<Vec<PlanEntry>>, KindError> {
        let input: K::Input = codec::decode_input(input)?;
        let outputs = codec::decode_outputs::<K::Output>(borrowed(outputs), "subtask")?;
        match self.0.review(&input, &outputs, round)? {
            Review::Accept => Ok(None),
            // Unnamed additions get ids that cannot collide with the plan's positions.
            Review::Revise(planned) => Ok(Some(to_entries(
                planned,
                &format!("r{round}."),
                PLANNED_DEPTH,
            )?)),
        }
    }

    fn handle(
        &self,
        payload: &[u8],
        context: HandlerContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, KindError>> {
        let decoded: Result<K::Subtask, KindError> = codec::decode(payload, "invalid subtask");
        let kind = Arc::clone(&self.0);
        Box::pin(async move {
            let output = kind.handle(decoded?, context).await?;
            codec::encode(&output, "output")
        })
    }

    fn synthesize(
        &self,
        _task: &TaskView,
        input: &[u8],
        outputs: Vec<(String, Vec<u8>)>,
        _failures: &[(String, String)],
    ) -> Result<rmpv::Value, KindError> {
        let input: K::Input = codec::decode_input(input)?;
        let outputs = codec::decode_outputs::<K::Output>(borrowed(&outputs), "subtask")?;
        let combined = self.0.synthesize(&input, outputs)?;
        codec::encode_value(&combined, "synthesized output")
    }

    fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

/// Encodes `planned` subtasks as plan entries; one without an id gets `id_prefix` followed by
/// its position in `planned`. Entries are at spawn depth `depth`.
///
/// Used by the services, not by kind authors.
///
/// # Errors
/// A subtask that has no MessagePack form.
pub fn to_entries<S: Serialize>(
    planned: Vec<Planned<S>>,
    id_prefix: &str,
    depth: u32,
) -> Result<Vec<PlanEntry>, KindError> {
    let encoded = planned
        .into_iter()
        .map(|item| codec::encode_planned(item, "subtask"))
        .collect::<Result<Vec<_>, KindError>>()?;
    Ok(spawned_entries(encoded, id_prefix, depth))
}

/// Turns subtasks already encoded (what a handler spawned through [`HandlerContext::spawn`])
/// into plan entries at spawn depth `depth`; one without an id gets `id_prefix` followed by its
/// position, one without a worker type gets [`protocol::DEFAULT_WORKER_TYPE`].
///
/// Used by the services, not by kind authors.
pub fn spawned_entries(
    spawned: Vec<Planned<ByteBuf>>,
    id_prefix: &str,
    depth: u32,
) -> Vec<PlanEntry> {
    spawned
        .into_iter()
        .enumerate()
        .map(|(offset, item)| {
            let (payload, child) = match item.work {
                Work::Handler(payload) => (payload, None),
                Work::Child(spec) => (ByteBuf::new(), Some(Box::new(spec))),
            };
            PlanEntry {
                id: item.id.unwrap_or_else(|| format!("{id_prefix}{offset}")),
                worker_type: item
                    .worker_type
                    .unwrap_or_else(|| protocol::DEFAULT_WORKER_TYPE.to_owned()),
                depends_on: item.depends_on,
                depth,
                payload,
                child,
            }
        })
        .collect()
}

/// Most outputs a review or synthesis of a [`Kind::INLINE`] kind handles on the service's own
/// thread; with more, it goes to the blocking pool (decoding them alone takes a while).
///
/// Used by the services, not by kind authors.
pub const INLINE_OUTPUTS: usize = 1_000;

/// Runs `call`, a kind's plan, review or synthesis: on this thread when `inline`, else on the
/// blocking pool. Returns what `call` returned; a panic comes back as `Err` with its message,
/// either way.
///
/// Used by the services, not by kind authors.
///
/// # Errors
/// `call` panicked (or its blocking task was cancelled): the panic's text.
pub async fn run_kind_code<T: Send + 'static>(
    inline: bool,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if inline {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
            .map_err(|payload| panic_text(payload.as_ref()));
    }
    match tokio::task::spawn_blocking(call).await {
        Ok(value) => Ok(value),
        Err(join) => Err(panic_message(join)),
    }
}

/// The text of a spawned task's failure, for an error message: its panic's text
/// ([`panic_text`]), or why it did not finish (cancelled at shutdown).
///
/// Used by the services, not by kind authors.
pub fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => panic_text(payload.as_ref()),
        Err(join) => join.to_string(),
    }
}

/// The text of a panic's payload (a `&str` or a `String`, as `panic!` makes them), for an error
/// message; other payloads give a fixed placeholder.
///
/// Used by the services, not by kind authors.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// Sorts `(id, value)` pairs into plan order: numeric ids by number, others after, by text.
///
/// Used by the services, not by kind authors.
pub fn sort_by_subtask_id<T>(items: &mut [(String, T)]) {
    items.sort_by(
        |(a, _), (b, _)| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => a.cmp(b),
        },
    );
}

#[cfg(test)]
mod tests;
