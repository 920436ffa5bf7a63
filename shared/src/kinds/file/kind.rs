//! [`FileKind`]: a kind defined in a kinds file, seen by the services through [`DynKind`]. Each
//! step gets a JSON request and answers JSON (docs/kinds.md#the-json-contract); `builtin` steps
//! go to the Rust kind's own step. Plan, review and synthesis are synchronous in [`DynKind`]
//! and run on the blocking pool (the kind is never `INLINE`), where they wait for the async
//! step call with `Handle::block_on`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use super::json::{
    checked_usage, decode_json, encode_json, json_value, read_answer, HandleAnswer, PlanAnswer,
    ReviewAnswer, SubtaskSpec, SynthesisAnswer,
};
use super::{LoadSettings, StepRef};
use crate::kinds::{to_entries, DynKind, HandlerContext, KindError, Planned, TaskView, Work};
use crate::protocol::{PlanEntry, DEFAULT_WORKER_TYPE};
use crate::steps::{spec::MAX_DURATION_MS, CallLimits, Step, StepError};
use crate::usage::{Budget, Usage, UsageMeter};

/// The steps of a file kind.
pub(crate) struct Steps {
    pub(crate) planner: Option<StepRef>,
    pub(crate) handlers: BTreeMap<String, StepRef>,
    pub(crate) review: Option<StepRef>,
    pub(crate) synthesis: Option<StepRef>,
}

/// A kind defined in a kinds file ([`super::load`]).
pub struct FileKind {
    name: String,
    description: Option<String>,
    steps: Steps,
    settings: LoadSettings,
    /// [`DynKind::fingerprint`]: a hash of the kind's table in the file.
    fingerprint: String,
}

/// Spawn depth of what a planner or a review returns.
const PLANNED_DEPTH: u32 = 0;

impl FileKind {
    pub(crate) fn new(
        name: String,
        description: Option<String>,
        steps: Steps,
        settings: LoadSettings,
    ) -> Self {
        Self {
            name,
            description,
            steps,
            settings,
            fingerprint: String::new(),
        }
    }

    /// This kind with `fingerprint` as its [`DynKind::fingerprint`].
    #[must_use]
    pub(crate) fn with_fingerprint(mut self, fingerprint: String) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// The `description` of the file, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Limits of a plan, review or synthesis call: the step's own `timeout_ms` decides.
    fn unbounded(&self) -> CallLimits {
        CallLimits {
            timeout: Duration::from_millis(MAX_DURATION_MS),
            max_answer_bytes: self.settings.max_answer_bytes,
        }
    }

    /// Calls `step` from a blocking-pool thread for `task` and waits for its answer; the
    /// request gets the task's `budget`, and what a failed call used goes to `task.usage`.
    fn call_blocking(
        &self,
        step: &Step,
        task: &TaskView,
        mut request: Json,
    ) -> Result<Vec<u8>, KindError> {
        add_budget(&mut request, task.budget, &task.usage);
        let request = encode_request(&request)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| KindError::fatal(format!("no async runtime to call the step on: {e}")))?;
        // What calls used before the step failed, counted like an answer's usage.
        let failed = UsageMeter::default();
        let answer = runtime.block_on(step.call_metered(
            &request,
            self.unbounded(),
            &CancellationToken::new(),
            &failed,
        ));
        record_usage(task, failed.take());
        answer.map_err(kind_error)
    }

    /// Checks that every entry of `entries` runs on a worker type this kind has a handler for.
    fn check_worker_types(&self, entries: &[PlanEntry], who: &str) -> Result<(), KindError> {
        for entry in entries.iter().filter(|e| e.child.is_none()) {
            if !self.steps.handlers.contains_key(&entry.worker_type) {
                let known: Vec<&str> = self.steps.handlers.keys().map(String::as_str).collect();
                return Err(KindError::fatal(format!(
                    "{who} sent subtask {} to worker type {}, which kind {} has no handler for (it has: {})",
                    crate::text::quoted(&entry.id),
                    crate::text::quoted(&entry.worker_type),
                    crate::text::quoted(&self.name),
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The default planner: one subtask per item of `input.items`, on `default` workers.
    fn default_plan(input: &Json) -> Result<Vec<Planned<Json>>, KindError> {
        let Some(items) = input.get("items").and_then(Json::as_array) else {
            return Err(KindError::fatal(
                "input.items: a kind without a planner needs an array of items there (one subtask each)",
            ));
        };
        Ok(items.iter().cloned().map(Planned::new).collect())
    }
}

/// A request as the compact JSON bytes a step reads (one line, for pools).
fn encode_request(request: &Json) -> Result<Vec<u8>, KindError> {
    serde_json::to_vec(request)
        .map_err(|e| KindError::fatal(format!("cannot write the request: {e}")))
}

/// Adds `"budget": {"max_tokens", "used"}` to a step's `request` when the task has one:
/// `used` is what the service read when the step's run began plus what `meter` holds of this
/// run already (docs/kinds.md#budget).
fn add_budget(request: &mut Json, budget: Option<Budget>, meter: &UsageMeter) {
    if let (Some(budget), Some(map)) = (budget, request.as_object_mut()) {
        let budget = budget.after(meter.tokens());
        map.insert(
            "budget".to_owned(),
            json!({"max_tokens": budget.max_tokens, "used": budget.used}),
        );
    }
}

/// Records `usage` (what a plan, review or synthesis step's model calls used) in the task's
/// meter, and counts it in the service's `chorus_llm_*` metrics, as the worker counts its
/// handlers' (README, metrics): every call is counted by the service that made it.
fn record_usage(task: &TaskView, usage: Vec<Usage>) {
    if usage.is_empty() {
        return;
    }
    crate::observe::metrics::llm_usage(&usage);
    task.usage.record(usage);
}

/// A step's failure as the kind's: the same class, and a retryable's wait.
fn kind_error(error: StepError) -> KindError {
    match error {
        StepError::Retryable {
            message,
            retry_after: Some(after),
        } => KindError::retryable_after(message, after),
        StepError::Retryable { message, .. } => KindError::retryable(message),
        StepError::Fatal { message } => KindError::fatal(message),
        // The worker sees its task's token cancelled and drops the attempt.
        StepError::Cancelled => KindError::fatal("cancelled"),
    }
}

/// Subtask specs of an answer as plan entries (ids default to `id_prefix` + position).
fn entries_of(specs: Vec<SubtaskSpec>, id_prefix: &str) -> Result<Vec<PlanEntry>, KindError> {
    let planned = specs
        .into_iter()
        .map(SubtaskSpec::into_planned)
        .collect::<Result<Vec<_>, _>>()?;
    to_entries(planned, id_prefix, PLANNED_DEPTH)
}

/// `(id, output)` pairs of MessagePack outputs as the JSON list steps get.
fn outputs_json(outputs: &[(String, Vec<u8>)]) -> Result<Json, KindError> {
    outputs
        .iter()
        .map(|(id, bytes)| {
            Ok(json!({"id": id, "output": decode_json(bytes, &format!("output of subtask {id}"))?}))
        })
        .collect::<Result<Vec<_>, KindError>>()
        .map(Json::Array)
}

/// The reviewed subtasks as the review request lists them: id, worker type, dependencies and
/// input (a child's entry has its kind instead of an input).
fn subtasks_json(entries: &[PlanEntry]) -> Result<Json, KindError> {
    entries
        .iter()
        .map(|entry| {
            let mut subtask = json!({
                "id": entry.id,
                "worker_type": entry.worker_type,
                "depends_on": entry.depends_on,
            });
            let input = match &entry.child {
                Some(child) => json!({"child": child.kind}),
                None => decode_json(&entry.payload, &format!("subtask {}", entry.id))?,
            };
            if let Some(map) = subtask.as_object_mut() {
                map.insert("input".to_owned(), input);
            }
            Ok(subtask)
        })
        .collect::<Result<Vec<_>, KindError>>()
        .map(Json::Array)
}

/// What a step is told about the task: id, kind and, with `input`, the input.
fn task_json(task: &TaskView, input: Option<Json>) -> Json {
    let mut view = json!({"id": task.id, "kind": task.kind});
    if let (Some(input), Some(map)) = (input, view.as_object_mut()) {
        map.insert("input".to_owned(), input);
    }
    view
}

impl DynKind for FileKind {
    fn name(&self) -> &str {
        &self.name
    }

    fn inline(&self) -> bool {
        false
    }

    fn inline_plan(&self, _input: &[u8]) -> bool {
        false
    }

    fn plan(&self, task: &TaskView, input: &[u8]) -> Result<Vec<PlanEntry>, KindError> {
        let entries = match &self.steps.planner {
            Some(StepRef::Builtin(kind)) => kind.plan(task, input)?,
            Some(StepRef::External(step)) => {
                let mut view = task_json(task, Some(decode_json(input, "input")?));
                if let Some(map) = view.as_object_mut() {
                    let options = serde_json::to_value(task.options).unwrap_or(Json::Null);
                    map.insert("options".to_owned(), options);
                }
                let answer =
                    self.call_blocking(step, task, json!({"step": "plan", "task": view}))?;
                let answer: PlanAnswer = read_answer(&answer, "plan")?;
                record_usage(task, checked_usage(answer.usage, "plan")?);
                entries_of(answer.subtasks, "")?
            }
            None => to_entries(
                Self::default_plan(&decode_json(input, "input")?)?,
                "",
                PLANNED_DEPTH,
            )?,
        };
        self.check_worker_types(&entries, "the planner")?;
        Ok(entries)
    }

    fn review(
        &self,
        task: &TaskView,
        input: &[u8],
        outputs: &[(String, Vec<u8>)],
        round: u32,
    ) -> Result<Option<Vec<PlanEntry>>, KindError> {
        let entries = match &self.steps.review {
            None => return Ok(None),
            Some(StepRef::Builtin(kind)) => match kind.review(task, input, outputs, round)? {
                None => return Ok(None),
                Some(entries) => entries,
            },
            Some(StepRef::External(step)) => {
                let request = json!({
                    "step": "review",
                    "task": task_json(task, Some(decode_json(input, "input")?)),
                    "round": round,
                    "outputs": outputs_json(outputs)?,
                    "subtasks": subtasks_json(&task.subtasks)?,
                });
                let answer: ReviewAnswer =
                    read_answer(&self.call_blocking(step, task, request)?, "review")?;
                record_usage(task, checked_usage(answer.usage, "review")?);
                if answer.accept {
                    return Ok(None);
                }
                entries_of(answer.subtasks, &format!("r{round}."))?
            }
        };
        self.check_worker_types(&entries, "the review")?;
        Ok(Some(entries))
    }

    fn handle(
        &self,
        payload: &[u8],
        context: HandlerContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, KindError>> {
        let step = self.steps.handlers.get(&context.worker_type).cloned();
        let name = self.name.clone();
        let max_answer_bytes = self.settings.max_answer_bytes;
        let handlers: Vec<String> = self.steps.handlers.keys().cloned().collect();
        let payload = payload.to_vec();
        Box::pin(async move {
            match step {
                None => Err(KindError::fatal(format!(
                    "kind {} has no handler for worker type {}",
                    crate::text::quoted(&name),
                    crate::text::quoted(&context.worker_type)
                ))),
                Some(StepRef::Builtin(kind)) => kind.handle(&payload, context).await,
                Some(StepRef::External(step)) => {
                    handle_external(&step, &payload, context, max_answer_bytes, &handlers).await
                }
            }
        })
    }

    fn synthesize(
        &self,
        task: &TaskView,
        input: &[u8],
        outputs: Vec<(String, Vec<u8>)>,
        failures: &[(String, String)],
    ) -> Result<rmpv::Value, KindError> {
        match &self.steps.synthesis {
            Some(StepRef::Builtin(kind)) => kind.synthesize(task, input, outputs, failures),
            Some(StepRef::External(step)) => {
                let failures: Vec<Json> = failures
                    .iter()
                    .map(|(id, error)| json!({"id": id, "error": error}))
                    .collect();
                let request = json!({
                    "step": "synthesize",
                    "task": task_json(task, Some(decode_json(input, "input")?)),
                    "outputs": outputs_json(&outputs)?,
                    "failures": failures,
                });
                let answer: SynthesisAnswer =
                    read_answer(&self.call_blocking(step, task, request)?, "synthesis")?;
                record_usage(task, checked_usage(answer.usage, "synthesis")?);
                json_value(&answer.output, "synthesized output")
            }
            // The outputs as a list, in plan order.
            None => outputs
                .iter()
                .map(|(id, bytes)| {
                    rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| {
                        KindError::fatal(format!("output of subtask {id} does not decode: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(rmpv::Value::Array),
        }
    }

    fn steps(&self) -> Vec<(String, String)> {
        let mut lines = vec![(
            "planner".to_owned(),
            self.steps.planner.as_ref().map_or_else(
                || "default (one subtask per input.items)".to_owned(),
                StepRef::describe,
            ),
        )];
        for (worker_type, step) in &self.steps.handlers {
            lines.push((format!("handler {worker_type}"), step.describe()));
        }
        if let Some(review) = &self.steps.review {
            lines.push(("review".to_owned(), review.describe()));
        }
        lines.push((
            "synthesis".to_owned(),
            self.steps.synthesis.as_ref().map_or_else(
                || "default (the outputs as a list)".to_owned(),
                StepRef::describe,
            ),
        ));
        lines
    }

    fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    fn calls_out(&self) -> bool {
        true
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// Runs a command or HTTP handler on one subtask: the request of docs/kinds.md, the call
/// under the attempt's time limit and cancellation, its output and spawned subtasks.
async fn handle_external(
    step: &Step,
    payload: &[u8],
    context: HandlerContext,
    max_answer_bytes: usize,
    handlers: &[String],
) -> Result<Vec<u8>, KindError> {
    let dependencies = context
        .dependencies
        .iter()
        .map(|(id, bytes)| {
            Ok(json!({"id": id, "output": decode_json(bytes, &format!("output of dependency {id}"))?}))
        })
        .collect::<Result<Vec<_>, KindError>>()?;
    let mut request = json!({
        "step": "handle",
        "task": {"id": context.task, "kind": context.kind},
        "subtask": {
            "id": context.subtask,
            "worker_type": context.worker_type,
            "input": decode_json(payload, "subtask")?,
            "depth": context.depth,
        },
        "attempt": context.attempt,
        "max_attempts": context.max_attempts,
        "dependencies": dependencies,
    });
    let limits = CallLimits {
        timeout: context
            .time_limit
            .unwrap_or(Duration::from_millis(MAX_DURATION_MS)),
        max_answer_bytes,
    };
    add_budget(&mut request, context.budget, &context.usage);
    let answer = step
        .call_metered(
            &encode_request(&request)?,
            limits,
            &context.cancel,
            &context.usage,
        )
        .await
        .map_err(kind_error)?;
    let answer: HandleAnswer = read_answer(&answer, "handle")?;
    context.usage.record(checked_usage(answer.usage, "handle")?);
    for spec in answer.spawn {
        let planned = spec.into_planned()?;
        let worker_type = planned
            .worker_type
            .as_deref()
            .unwrap_or(DEFAULT_WORKER_TYPE);
        if matches!(planned.work, Work::Handler(_)) && !handlers.iter().any(|h| h == worker_type) {
            // Nothing would ever consume it: fail the attempt instead of a task that hangs.
            return Err(KindError::fatal(format!(
                "the handler spawned a subtask for worker type {}, which has no handler (it has: {})",
                crate::text::quoted(worker_type),
                handlers.join(", ")
            )));
        }
        context.spawn(planned)?;
    }
    encode_json(&answer.output, "output")
}
