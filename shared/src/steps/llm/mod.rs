//! An `llm` step: a language model as a kind's planner, handler, review or synthesis. It reads
//! the same JSON request as every step (docs/kinds.md#the-json-contract), renders its prompts
//! from it, calls the model over the Chat Completions API and answers the same JSON answer,
//! with the calls' `usage` (docs/llm.md). Plans and verdicts are requested as structured
//! output and validated against a JSON Schema; an invalid one is sent back to the model once.
//!
//! # Layout
//! - `client`: providers, models and one Chat Completions call.
//! - `cache`: the call cache, identical calls answered from Redis.
//! - `prompt`: the minijinja templates.
//! - `schema`: the schemas of plans, verdicts and JSON outputs, and their validation.

pub mod cache;
pub mod client;
pub mod prompt;
pub mod schema;
pub mod shared;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};
use tokio_util::sync::CancellationToken;

pub use client::{Catalog, Model, Tokens};
pub use shared::StoreSlot;

use super::command::config_error;
use super::spec::{LlmOutput, LlmSpec, StructuredOutput};
use super::{StepConfigError, StepError};
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

/// The tokens of a step's calls so far, for its answer's `usage`.
#[derive(Debug, Default)]
struct Meter {
    tokens: Tokens,
    calls: u64,
    cache_hits: u64,
}

impl Meter {
    /// Counts one call answered by `reply` (a cache hit counts as a call with no tokens).
    fn add(&mut self, reply: &client::Completion) {
        self.calls += 1;
        self.cache_hits += u64::from(reply.cache_hit);
        self.tokens.prompt += reply.tokens.prompt;
        self.tokens.completion += reply.tokens.completion;
        self.tokens.cached += reply.tokens.cached;
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
    /// `timeout` per call, stopped when `cancel` fires.
    ///
    /// # Errors
    /// [`StepError`]: the provider's failures as an `http` step's; a plan or verdict still
    /// invalid after one repair, a template failing, an answer over `max_answer_bytes`: fatal.
    pub async fn call(
        &self,
        request: &[u8],
        timeout: Duration,
        max_answer_bytes: usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, StepError> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(StepError::Cancelled),
            result = self.answer(request, timeout, max_answer_bytes) => result,
        }
    }

    async fn answer(
        &self,
        request: &[u8],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Vec<u8>, StepError> {
        let request: Json = serde_json::from_slice(request).map_err(|e| StepError::Fatal {
            message: format!("the request is not JSON: {e}"),
        })?;
        let (system, prompt) = self.templates.render(&request)?;
        let mut meter = Meter::default();
        let call = Call {
            step: self,
            system,
            prompt,
            timeout,
            max_bytes,
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
            map.insert("usage".to_owned(), self.usage(&meter));
        }
        let bytes = answer.to_string().into_bytes();
        if bytes.len() > max_bytes {
            return Err(super::answer::oversized(
                &self.model.what(),
                max_bytes,
                &bytes,
            ));
        }
        Ok(bytes)
    }

    /// The answer's `usage` list: one entry, this step's model (docs/kinds.md#usage).
    fn usage(&self, meter: &Meter) -> Json {
        let mut entry = json!({
            "model": self.model.name,
            "prompt_tokens": meter.tokens.prompt,
            "completion_tokens": meter.tokens.completion,
            "cached_tokens": meter.tokens.cached,
            "calls": meter.calls,
            "cache_hits": meter.cache_hits,
        });
        if let (Some(cost), Some(map)) = (self.model.cost(meter.tokens), entry.as_object_mut()) {
            map.insert("cost".to_owned(), json!(cost));
        }
        Json::Array(vec![entry])
    }
}

/// One step call's rendered messages and limits.
struct Call<'a> {
    step: &'a LlmStep,
    system: Option<String>,
    prompt: String,
    timeout: Duration,
    max_bytes: usize,
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
    async fn text(&self, meter: &mut Meter) -> Result<String, StepError> {
        let reply = self
            .step
            .model
            .chat(&self.messages(None), None, self.timeout, self.max_bytes)
            .await?;
        meter.add(&reply);
        Ok(reply.content)
    }

    /// A reply `schema` accepts, asked for as structured output; an invalid reply is sent
    /// back once with what is wrong with it.
    async fn structured(&self, schema: &Schema, meter: &mut Meter) -> Result<Json, StepError> {
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
        let reply = model
            .chat(&messages, format.clone(), self.timeout, self.max_bytes)
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
        let reply = model
            .chat(&messages, format, self.timeout, self.max_bytes)
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
