//! Chat Completions over HTTP (`POST {base_url}/chat/completions`, the OpenAI-compatible API of
//! OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio and most gateways): the providers and
//! models of a kinds file, built and checked at start-up, and one call with its `usage`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::steps::command::{config_error, millis};
use crate::steps::http;
use crate::steps::spec::{self, ModelSpec, ProviderSpec, StructuredOutput};
use crate::steps::{answer, StepConfigError, StepError};

use super::{cache, StoreSlot};

/// An OpenAI-compatible endpoint.
#[derive(Debug)]
pub struct Provider {
    client: Client,
    url: Url,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// How JSON answers are requested.
    pub structured: StructuredOutput,
}

/// A model of a provider, with its parameters and prices.
#[derive(Debug)]
pub struct Model {
    /// The name of its `[models.<name>]` table (what `usage` entries name).
    pub name: String,
    pub(super) spec: ModelSpec,
    /// Its provider.
    pub provider: Arc<Provider>,
    /// The service's Redis, once attached: shared limits and the call cache.
    pub store: StoreSlot,
    /// Whether this process wrote the file's limits to Redis yet.
    pub(super) seeded: super::limits::Seeded,
    /// Its cache settings; `None`: its calls are not cached.
    pub cache: Option<cache::Policy>,
}

/// The providers and models of a kinds file, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    models: BTreeMap<String, Arc<Model>>,
}

/// Tokens of one call or of several, as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens (cached ones included).
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Prompt tokens the provider served from its own prompt cache.
    pub cached: u64,
}

/// A model's reply.
#[derive(Debug)]
pub struct Completion {
    /// The assistant message's text.
    pub content: String,
    /// What the call used (nothing when answered from the cache).
    pub tokens: Tokens,
    /// Answered from Chorus's call cache, without calling the provider.
    pub cache_hit: bool,
}

impl Catalog {
    /// Builds and checks every provider and model; `base_dir` resolves a provider's `ca_file`;
    /// every model shares `store` (the registry's slot for the service's Redis).
    ///
    /// # Errors
    /// `(key, message)` with the key relative to the file: `providers.local.base_url`,
    /// `providers.local.base_url_env`, `providers.local.api_key_env`, `models.writer.provider`, `models.writer.temperature`...
    pub fn build(
        providers: &BTreeMap<String, ProviderSpec>,
        models: &BTreeMap<String, ModelSpec>,
        base_dir: &Path,
        store: &StoreSlot,
    ) -> Result<Self, (String, String)> {
        let mut built = BTreeMap::new();
        for (name, spec) in providers {
            let provider = Provider::build(spec, base_dir)
                .map_err(|e| (format!("providers.{name}.{}", e.key), e.message))?;
            built.insert(name.clone(), Arc::new(provider));
        }
        let mut catalog = Catalog::default();
        for (name, spec) in models {
            let key = |field: &str| format!("models.{name}.{field}");
            let provider = built.get(&spec.provider).ok_or_else(|| {
                let known: Vec<&str> = built.keys().map(String::as_str).collect();
                (
                    key("provider"),
                    format!(
                        "no provider {:?} in [providers] (it has: {})",
                        spec.provider,
                        known.join(", ")
                    ),
                )
            })?;
            if spec.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                return Err((key("temperature"), "must be between 0 and 2".to_owned()));
            }
            super::limits::check(name, spec).map_err(|(field, e)| (key(field), e))?;
            if spec.max_tokens == Some(0) {
                return Err((key("max_tokens"), "must be at least 1".to_owned()));
            }
            for (field, price) in [
                ("price_per_million_input", spec.price_per_million_input),
                ("price_per_million_output", spec.price_per_million_output),
            ] {
                if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                    return Err((key(field), "must be a number >= 0".to_owned()));
                }
            }
            let cache =
                cache::Policy::from_spec(spec).map_err(|(field, message)| (key(field), message))?;
            catalog.models.insert(
                name.clone(),
                Arc::new(Model {
                    name: name.clone(),
                    spec: spec.clone(),
                    provider: Arc::clone(provider),
                    store: store.clone(),
                    seeded: Default::default(),
                    cache,
                }),
            );
        }
        Ok(catalog)
    }

    /// The model named `name`.
    ///
    /// # Errors
    /// [`StepConfigError`] on `model` naming the models there are.
    pub fn model(&self, name: &str) -> Result<Arc<Model>, StepConfigError> {
        self.models.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
            config_error(
                "model",
                format!(
                    "no model {name:?} in [models] (it has: {})",
                    known.join(", ")
                ),
            )
        })
    }
}

impl Provider {
    fn build(spec: &ProviderSpec, base_dir: &Path) -> Result<Self, StepConfigError> {
        let base_url = match (&spec.base_url, &spec.base_url_env) {
            (Some(url), None) => url.clone(),
            (None, Some(variable)) => http::read_env("base_url_env", variable)?,
            _ => {
                return Err(config_error(
                    "base_url",
                    "give exactly one of base_url and base_url_env",
                ))
            }
        };
        let base = Url::parse(&base_url)
            .map_err(|e| config_error("base_url", format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(config_error(
                "base_url",
                "must be an http:// or https:// URL with a host",
            ));
        }
        let url = Url::parse(&format!(
            "{}/chat/completions",
            base_url.trim_end_matches('/')
        ))
        .map_err(|e| config_error("base_url", format!("not a URL: {e}")))?;
        let authorization = match &spec.api_key_env {
            Some(variable) => {
                let key = http::read_env("api_key_env", variable)?;
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    config_error(
                        "api_key_env",
                        format!("{variable} holds characters a header cannot carry"),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            client: http::client(spec.ca_file.as_deref(), base_dir, "base_url")?,
            url,
            authorization,
            timeout: millis("timeout_ms", spec.timeout_ms, spec::DEFAULT_TIMEOUT_MS)?,
            structured: spec.structured_output,
        })
    }
}

/// The parts of a Chat Completions response we read.
#[derive(Deserialize)]
struct Response {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ApiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl Model {
    /// `llm "writer"`, naming the model in messages.
    pub fn what(&self) -> String {
        format!("llm {}", crate::text::quoted(&self.name))
    }

    /// `llm writer (gpt-4o-mini at http://...)` for `chorus kinds`.
    pub fn describe(&self) -> String {
        let mut shown = self.provider.url.clone();
        let _ = shown.set_password(None);
        format!("llm {} ({} at {shown})", self.name, self.spec.model)
    }

    /// The cost of `tokens` at the model's prices, when it has any.
    pub fn cost(&self, tokens: Tokens) -> Option<f64> {
        let (input, output) = (
            self.spec.price_per_million_input,
            self.spec.price_per_million_output,
        );
        if input.is_none() && output.is_none() {
            return None;
        }
        // u64 → f64 loses precision only beyond 2^53 tokens.
        #[allow(clippy::cast_precision_loss)]
        let cost = tokens.prompt as f64 * input.unwrap_or(0.0) / 1e6
            + tokens.completion as f64 * output.unwrap_or(0.0) / 1e6;
        Some(cost)
    }

    /// One Chat Completions call with `messages` (and `response_format` when given), under
    /// the smaller of `timeout` and the provider's; the response read up to `max_bytes`
    /// (`limits` is `(timeout, max_bytes)`). With `spend`, the task's token budget is checked
    /// against Redis right before the call is sent ([`super::Spend`]). A
    /// cached model's identical call within its ttl is answered from the cache instead
    /// ([`cache`]), without calling the provider. `origin` names who makes the call
    /// ([`super::origin`]; empty: no one in particular), so that its own redo after a crash is
    /// counted as the paid call it is.
    ///
    /// # Errors
    /// [`StepError`] as an `http` step classifies it (429/5xx/connection/timeout retryable);
    /// a response without the message's text is fatal; so is a call refused over budget.
    pub async fn chat(
        &self,
        messages: &[Json],
        response_format: Option<Json>,
        limits: (Duration, usize),
        origin: &str,
        spend: Option<&super::Spend<'_>>,
    ) -> Result<Completion, StepError> {
        let completion = self
            .chat_once(messages, response_format, limits, origin, spend)
            .await;
        if completion.is_err() {
            // Answered calls are counted from their usage entries; failed ones have none.
            crate::observe::metrics::llm_call_failed(&self.name);
        }
        completion
    }

    /// [`Model::chat`] without its count of failed calls.
    async fn chat_once(
        &self,
        messages: &[Json],
        response_format: Option<Json>,
        (timeout, max_bytes): (Duration, usize),
        origin: &str,
        spend: Option<&super::Spend<'_>>,
    ) -> Result<Completion, StepError> {
        let timeout = timeout.min(self.provider.timeout);
        let mut body = json!({"model": self.spec.model, "messages": messages});
        if let Some(map) = body.as_object_mut() {
            if let Some(temperature) = self.spec.temperature {
                map.insert("temperature".to_owned(), json!(temperature));
            }
            if let Some(max_tokens) = self.spec.max_tokens {
                map.insert("max_tokens".to_owned(), json!(max_tokens));
            }
            if let Some(format) = response_format {
                map.insert("response_format".to_owned(), format);
            }
        }
        let body = body.to_string();
        let what = self.what();
        let url = self.provider.url.as_str();
        let cached = cache::Slot::new(self.store.get(), self.cache, url, &self.spec.model, &body);
        // A hit is looked up before the limits: it calls no provider, so it takes no slot.
        if let Some(slot) = cached.as_ref() {
            if let Some(completion) = slot.lookup(&what, origin).await {
                return Ok(completion);
            }
        }
        let request = |timeout| {
            let request = self
                .provider
                .client
                .post(self.provider.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .timeout(timeout)
                .body(body.clone());
            match &self.provider.authorization {
                Some(authorization) => request.header(AUTHORIZATION, authorization.clone()),
                None => request,
            }
        };
        // Within the model's shared limits, throttling waited out (docs/llm.md#limits).
        let (bytes, permit) = self
            .send_limited(messages, (timeout, max_bytes), spend, request)
            .await?;
        let completion = self.completion(&bytes);
        let used = completion
            .as_ref()
            .ok()
            .map(|c| c.tokens.prompt + c.tokens.completion);
        self.settle(permit, used).await;
        if let (Ok(completion), Some(slot)) = (&completion, cached) {
            slot.store(completion, max_bytes, &what, origin).await;
        }
        completion
    }

    /// The completion in a response's `bytes`.
    fn completion(&self, bytes: &[u8]) -> Result<Completion, StepError> {
        let what = self.what();
        let response: Response = serde_json::from_slice(bytes).map_err(|e| StepError::Fatal {
            message: format!(
                "{what} answered something that is not a chat completion ({e}): {}",
                answer::first_bytes(bytes)
            ),
        })?;
        let usage = response.usage;
        let tokens = Tokens {
            prompt: usage.as_ref().map_or(0, |u| u.prompt_tokens),
            completion: usage.as_ref().map_or(0, |u| u.completion_tokens),
            cached: usage
                .as_ref()
                .and_then(|u| u.prompt_tokens_details.as_ref())
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        };
        let message = response.choices.into_iter().next().map(|c| c.message);
        match message {
            Some(Message {
                content: Some(content),
                ..
            }) => Ok(Completion {
                content,
                tokens,
                cache_hit: false,
            }),
            Some(Message {
                refusal: Some(refusal),
                ..
            }) => Err(StepError::Fatal {
                message: format!("{what} refused: {}", crate::text::reason(&refusal)),
            }),
            _ => Err(StepError::Fatal {
                message: format!("{what} answered no message text"),
            }),
        }
    }
}
