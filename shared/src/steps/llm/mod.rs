//! An `llm` step: a language model as a kind's planner, handler, review or synthesis. It reads
//! the same JSON request as every step (docs/kinds.md#the-json-contract), renders its prompts
//! from it, calls the model over the Chat Completions API and answers the same JSON answer,
//! with the calls' `usage` (docs/llm.md). Plans and verdicts are requested as structured
//! output and validated against a JSON Schema; an invalid one is sent back to the model once.
//!
//! # Layout
//! - `client`: providers, models and one Chat Completions call.
//! - `cache`: the call cache, identical calls answered from Redis.
//! - `limits`: the model's limits shared in Redis, and throttling waited out.
//! - `prompt`: the minijinja templates.
//! - `schema`: the schemas of plans, verdicts and JSON outputs, and their validation.

pub mod cache;
pub mod client;
pub mod limits;
pub mod prompt;
pub mod schema;
pub mod shared;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::usage::{Budget, Usage, UsageMeter, TOKEN_BUDGET_EXCEEDED};
pub use client::{Catalog, Model, Tokens};
pub use shared::StoreSlot;

use super::command::config_error;
use super::spec::{LlmOutput, LlmSpec, StructuredOutput};
use super::{StepConfigError, StepError};
use crate::store::Store;
use prompt::Templates;
use schema::Schema;

/// An `llm` step, checked and ready to call.
#[derive(Debug)]
pub struct LlmStep {
    model: Arc<Model>,
    templates: Templates,
    output: LlmOutput,
    plan: Schema,
    review: Schema,
    object: Schema,
}

/// The tokens of a step's calls so far, for its answer's `usage`, and the request's `budget`
/// each call is checked against. Dropped before the answer is made (the step failed, was
/// cancelled or refused a call over budget), it records what the calls used in `failed`:
/// they were paid all the same (docs/kinds.md#usage).
#[derive(Debug)]
struct Meter<'a> {
    model: &'a Model,
    tokens: Tokens,
    calls: u64,
    budget: Option<Budget>,
    failed: &'a UsageMeter,
    answered: bool,
    cache_hits: u64,
}

impl<'a> Meter<'a> {
    fn new(model: &'a Model, budget: Option<Budget>, failed: &'a UsageMeter) -> Self {
        Self {
            model,
            tokens: Tokens::default(),
            calls: 0,
            budget,
            failed,
            answered: false,
            cache_hits: 0,
        }
    }

    /// Before each call: refuses it once the budget is spent, counting this step's calls so
    /// far on top of what the request said was used (the rule of the task option
    /// `max_tokens`: once spent, no further call starts). Returns what the call checks again,
    /// against the task's record in Redis, right before it is sent ([`Spend`]).
    ///
    /// # Errors
    /// [`StepError::Fatal`] starting with [`TOKEN_BUDGET_EXCEEDED`].
    fn check_budget<'t>(&self, task: &'t str) -> Result<Option<Spend<'t>>, StepError> {
        let Some(before) = self.budget else {
            return Ok(None);
        };
        let spend = Spend {
            task,
            before,
            own: self.tokens.prompt.saturating_add(self.tokens.completion),
            call: self.calls + 1,
        };
        spend.check(before.used, &self.model.what())?;
        Ok(Some(spend))
    }

    /// Counts one call answered by `reply` (a cache hit counts as a call with no tokens).
    fn add(&mut self, reply: &client::Completion) {
        self.calls += 1;
        self.cache_hits += u64::from(reply.cache_hit);
        self.tokens.prompt += reply.tokens.prompt;
        self.tokens.completion += reply.tokens.completion;
        self.tokens.cached += reply.tokens.cached;
    }

    /// The usage entry of this step's calls: its model's (docs/kinds.md#usage).
    fn usage(&self) -> Usage {
        Usage {
            model: self.model.name.clone(),
            prompt_tokens: self.tokens.prompt,
            completion_tokens: self.tokens.completion,
            cached_tokens: self.tokens.cached,
            calls: self.calls,
            cache_hits: self.cache_hits,
            cost: self.model.cost(self.tokens),
        }
    }
}

/// A call's view of its task's token budget (docs/llm.md#the-token-budget): checked from the
/// step's request before the call, and again right before it is sent (after waiting for the
/// model's limits) against the task's tokens as they are in Redis then, so that no call starts
/// once calls running at the same time have spent the budget.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// The task's id, naming its record in Redis.
    task: &'a str,
    /// The budget as the step's request gave it (the task's record then, this subtask's
    /// earlier attempts and this attempt's earlier steps).
    before: Budget,
    /// Prompt plus completion tokens of this step's calls so far.
    own: u64,
    /// This call's number in the step, from 1.
    call: u64,
}

impl Spend<'_> {
    /// Refuses the call when `recorded` (the task's tokens as last read: the request's view or
    /// Redis's, whichever is larger) plus this step's own calls reach `max_tokens`.
    ///
    /// # Errors
    /// [`StepError::Fatal`] starting with [`TOKEN_BUDGET_EXCEEDED`].
    fn check(&self, recorded: u64, what: &str) -> Result<(), StepError> {
        let budget = Budget {
            max_tokens: self.before.max_tokens,
            used: recorded.max(self.before.used),
        }
        .after(self.own);
        if budget.spent() {
            return Err(StepError::Fatal {
                message: format!(
                    "{TOKEN_BUDGET_EXCEEDED}: {} of max_tokens {} used before call {} of {what}",
                    budget.used, budget.max_tokens, self.call
                ),
            });
        }
        Ok(())
    }

    /// Checks the budget against the task's tokens in Redis now (one `HGET`). A read that
    /// fails leaves the request's view, which was checked already: the worker read the record
    /// when the attempt began.
    ///
    /// # Errors
    /// As [`Spend::check`].
    pub(super) async fn check_now(&self, store: &Store, what: &str) -> Result<(), StepError> {
        match store.tokens_used(self.task).await {
            Ok(recorded) => self.check(recorded, what),
            Err(e) => {
                tracing::debug!(task = %self.task, "{what}: the task's token budget could not be read again before the call ({e}); going by the request's");
                Ok(())
            }
        }
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        if !self.answered && self.calls > 0 {
            self.failed.record([self.usage()]);
        }
    }
}

impl LlmStep {
    /// Checks `spec` against `catalog` (the model exists) and parses its templates;
    /// `worker_types` are the kind's handler types, the only ones a plan may name.
    ///
    /// # Errors
    /// [`StepConfigError`] naming `model`, `system` or `prompt`.
    pub fn build(
        spec: &LlmSpec,
        catalog: &Catalog,
        worker_types: &[String],
    ) -> Result<Self, StepConfigError> {
        let model = catalog.model(&spec.model)?;
        let templates = Templates::build(spec.system.as_deref(), &spec.prompt)?;
        let schema = |built: Result<Schema, String>| built.map_err(|e| config_error("type", e));
        Ok(Self {
            model,
            templates,
            output: spec.output,
            plan: schema(Schema::plan(worker_types))?,
            review: schema(Schema::review())?,
            object: schema(Schema::object())?,
        })
    }

    /// One line for `chorus kinds`.
    pub fn describe(&self) -> String {
        self.model.describe()
    }

    /// Answers `request` (a step request of the JSON contract) by calling the model, under
    /// `timeout` per call, stopped when `cancel` fires. No call starts once the request's
    /// `budget` is spent, this step's own calls counted. The answer's `usage` has the calls;
    /// when there is no answer (a failure, a cancellation) they go to `failed` instead.
    ///
    /// # Errors
    /// [`StepError`]: the provider's failures as an `http` step's; a plan or verdict still
    /// invalid after one repair, a template failing, an answer over `max_answer_bytes`, a
    /// call refused over budget ([`TOKEN_BUDGET_EXCEEDED`]): fatal.
    pub async fn call(
        &self,
        request: &[u8],
        timeout: Duration,
        max_answer_bytes: usize,
        cancel: &CancellationToken,
        failed: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(StepError::Cancelled),
            result = self.answer(request, timeout, max_answer_bytes, failed) => result,
        }
    }

    async fn answer(
        &self,
        request: &[u8],
        timeout: Duration,
        max_bytes: usize,
        failed: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        let request: Json = serde_json::from_slice(request).map_err(|e| StepError::Fatal {
            message: format!("the request is not JSON: {e}"),
        })?;
        let budget = match request.get("budget") {
            None | Some(Json::Null) => None,
            Some(budget) => Some(Budget::deserialize(budget).map_err(|e| StepError::Fatal {
                message: format!("the request's budget is not {{\"max_tokens\", \"used\"}}: {e}"),
            })?),
        };
        let (system, prompt) = self.templates.render(&request)?;
        let mut meter = Meter::new(&self.model, budget, failed);
        let call = Call {
            step: self,
            system,
            prompt,
            timeout,
            max_bytes,
            origin: origin(&request),
            task: request
                .pointer("/task/id")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
        let mut answer = match request.get("step").and_then(Json::as_str) {
            Some("plan") => call.structured(&self.plan, &mut meter).await?,
            Some("review") => {
                let verdict = call.structured(&self.review, &mut meter).await?;
                review_answer(&verdict, &request)
            }
            _ => {
                let output = match self.output {
                    LlmOutput::Text => Json::String(call.text(&mut meter).await?),
                    LlmOutput::Json => call.structured(&self.object, &mut meter).await?,
                };
                json!({ "output": output })
            }
        };
        if let Some(map) = answer.as_object_mut() {
            map.insert("usage".to_owned(), json!([meter.usage()]));
        }
        let bytes = answer.to_string().into_bytes();
        if bytes.len() > max_bytes {
            return Err(super::answer::oversized(
                &self.model.what(),
                max_bytes,
                &bytes,
            ));
        }
        // From here the answer carries the calls' usage.
        meter.answered = true;
        Ok(bytes)
    }
}

/// One step call's rendered messages and limits.
struct Call<'a> {
    step: &'a LlmStep,
    system: Option<String>,
    prompt: String,
    timeout: Duration,
    max_bytes: usize,
    /// Who makes the calls ([`origin`]).
    origin: String,
    /// The task's id (the request's `task.id`), whose budget each call checks.
    task: String,
}

impl Call<'_> {
    /// The messages: the system message (when there is one, plus `extra`), the prompt.
    fn messages(&self, extra: Option<String>) -> Vec<Json> {
        let system = match (&self.system, extra) {
            (Some(system), Some(extra)) => Some(format!("{system}\n\n{extra}")),
            (Some(system), None) => Some(system.clone()),
            (None, extra) => extra,
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": self.prompt}));
        messages
    }

    /// The reply's text.
    async fn text(&self, meter: &mut Meter<'_>) -> Result<String, StepError> {
        let spend = meter.check_budget(&self.task)?;
        let reply = self
            .step
            .model
            .chat(
                &self.messages(None),
                None,
                (self.timeout, self.max_bytes),
                &self.origin,
                spend.as_ref(),
            )
            .await?;
        meter.add(&reply);
        Ok(reply.content)
    }

    /// A reply `schema` accepts, asked for as structured output; an invalid reply is sent
    /// back once with what is wrong with it.
    async fn structured(&self, schema: &Schema, meter: &mut Meter<'_>) -> Result<Json, StepError> {
        let model = &self.step.model;
        let structured = model.provider.structured;
        // Without json_schema support the model only sees the schema in its instructions.
        let extra = (structured == StructuredOutput::JsonObject).then(|| {
            format!(
                "Answer with one JSON object that follows this JSON Schema:\n{}",
                schema.text()
            )
        });
        let mut messages = self.messages(extra);
        let format = Some(schema.response_format(structured));
        let spend = meter.check_budget(&self.task)?;
        let reply = model
            .chat(
                &messages,
                format.clone(),
                (self.timeout, self.max_bytes),
                &self.origin,
                spend.as_ref(),
            )
            .await?;
        meter.add(&reply);
        let problem = match schema.check(&reply.content) {
            Ok(value) => return Ok(value),
            Err(problem) => problem,
        };
        // The problem quotes the model's text: escaped and bounded like every text we log.
        tracing::info!(
            model = %model.name,
            problem = %crate::text::reason(&problem),
            "invalid {}; sending it back once",
            schema.name()
        );
        let repair = format!(
            "That answer is invalid: {problem}. Answer again with only the corrected JSON object."
        );
        messages.push(json!({"role": "assistant", "content": reply.content}));
        messages.push(json!({"role": "user", "content": repair}));
        let spend = meter.check_budget(&self.task)?;
        let reply = model
            .chat(
                &messages,
                format,
                (self.timeout, self.max_bytes),
                &self.origin,
                spend.as_ref(),
            )
            .await?;
        meter.add(&reply);
        schema
            .check(&reply.content)
            .map_err(|problem| StepError::Fatal {
                message: format!(
                "{} answered an invalid {} twice (the second after being told what was wrong): {}",
                model.what(),
                schema.name(),
                crate::text::reason(&problem)
            ),
            })
    }
}

/// Who makes a step's calls, from its request (docs/kinds.md#the-json-contract): a handler's
/// attempt (`<task>/<subtask>/<attempt>`), or a planner's, review's (with its round) or
/// synthesis's run (`<task>/<step>[/<round>]`). The same step run again after its service died
/// before recording what it did has the same origin; a retry (the next attempt, whose request
/// carries the failed attempt's usage) or another task has another.
fn origin(request: &Json) -> String {
    let part = |value: Option<&Json>| match value {
        Some(Json::String(text)) => text.clone(),
        Some(Json::Number(number)) => number.to_string(),
        _ => String::new(),
    };
    let task = part(request.pointer("/task/id"));
    let step = part(request.get("step"));
    match step.as_str() {
        "handle" => format!(
            "{task}/{}/{}",
            part(request.pointer("/subtask/id")),
            part(request.get("attempt"))
        ),
        "review" => format!("{task}/review/{}", part(request.get("round"))),
        _ => format!("{task}/{step}"),
    }
}

/// A verdict (`{"accept", "redo": [{"id", "feedback"}]}`) as the contract's review answer:
/// each subtask redone with its input (from the request's `subtasks`) plus `feedback`, on its
/// own worker type and with its own dependencies.
fn review_answer(verdict: &Json, request: &Json) -> Json {
    let redo = verdict
        .get("redo")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let accept = verdict
        .get("accept")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    if accept || redo.is_empty() {
        return json!({"accept": true});
    }
    let known = request
        .get("subtasks")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let subtasks: Vec<Json> = redo
        .iter()
        .map(|item| {
            let id = item.get("id").cloned().unwrap_or(Json::Null);
            let feedback = item.get("feedback").cloned().unwrap_or(Json::Null);
            let original = known.iter().find(|s| s.get("id") == Some(&id));
            let mut input = original
                .and_then(|s| s.get("input"))
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_else(Map::new);
            input.insert("feedback".to_owned(), feedback);
            let mut subtask = json!({"id": id, "input": input});
            if let (Some(original), Some(map)) = (original, subtask.as_object_mut()) {
                for field in ["worker_type", "depends_on"] {
                    if let Some(value) = original.get(field) {
                        map.insert(field.to_owned(), value.clone());
                    }
                }
            }
            subtask
        })
        .collect();
    json!({"accept": false, "subtasks": subtasks})
}
