//! What a kinds file says about one step: the [`StepSpec`] of a planner, handler, review or
//! synthesis, decoded from TOML (or any serde format) with every unknown key refused.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Per-call time limit of a command or HTTP step when the file gives none (60 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// SIGTERM-to-SIGKILL grace of a command step when the file gives none (2 s).
pub const DEFAULT_GRACE_MS: u64 = 2_000;
/// Processes in a pool when the file gives no `pool_size`.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Largest `pool_size` accepted: more long-lived processes per step is a configuration mistake.
pub const MAX_POOL_SIZE: usize = 256;
/// Largest `timeout_ms` / `grace_ms` accepted (one day), so a typo cannot park a call forever.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// One step of a kind, as the kinds file writes it: `{ type = "command", ... }`,
/// `{ type = "http", ... }` or `{ type = "builtin", kind = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StepSpec {
    /// A program run with an argument list (no shell), JSON on stdin, JSON on stdout.
    Command(CommandSpec),
    /// A `POST` of the JSON request to a URL; the response body is the answer.
    Http(HttpSpec),
    /// A language model called over the Chat Completions API (`[models.<name>]`), its prompts
    /// rendered from the request (docs/llm.md).
    Llm(LlmSpec),
    /// A Rust kind's step of the registry, delegated by the kinds-file layer (not callable by
    /// [`super::Step`]).
    Builtin(BuiltinSpec),
}

/// How a command step runs its program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandMode {
    /// A process per call: the request on stdin (then closed), the answer is all of stdout.
    #[default]
    Call,
    /// `pool_size` long-lived processes speaking JSON Lines: one request per line on stdin, one
    /// answer per line on stdout, one call at a time per process.
    Pool,
}

/// A `command` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program: an absolute path, a path relative to the kinds file's directory (when it
    /// contains a `/`), or a name searched on `PATH`.
    pub program: String,
    /// Its arguments, passed as they are (no shell, no expansion).
    #[serde(default)]
    pub args: Vec<String>,
    /// A process per call (default) or a pool of long-lived processes.
    #[serde(default)]
    pub mode: CommandMode,
    /// Pool mode only: how many processes (default [`DEFAULT_POOL_SIZE`], at most
    /// [`MAX_POOL_SIZE`]).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Working directory, relative to the kinds file's directory (default: that directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the step's environment, which otherwise holds only `PATH`, `HOME`,
    /// `LANG`, `LC_*` and `TZ` of the service (see [`super::command`]).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-call time limit in milliseconds (default [`DEFAULT_TIMEOUT_MS`]); a call also stays
    /// under the limit its caller gives.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Milliseconds between SIGTERM and SIGKILL of the process group (default
    /// [`DEFAULT_GRACE_MS`]).
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// An `http` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The `http://` or `https://` URL the request is `POST`ed to.
    pub url: String,
    /// Fixed headers sent with every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose value is read from the named environment variable at start-up (secrets
    /// stay out of the file); a variable that is not set is a start-up error.
    #[serde(default)]
    pub headers_from_env: BTreeMap<String, String>,
    /// The environment variable holding the HMAC-SHA256 signing secret; when set, every call
    /// carries `X-Chorus-Timestamp` and `X-Chorus-Signature` (see [`super::http`]).
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Per-call time limit in milliseconds (default [`DEFAULT_TIMEOUT_MS`]).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A PEM file of CA certificates trusted INSTEAD of the system roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A `builtin` step: the step of the registry's Rust kind named `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinSpec {
    /// The name of a kind of the service's registry.
    pub kind: String,
}

/// What an `llm` step's model answers with, for a handler or a synthesis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LlmOutput {
    /// The reply's text is the output (a JSON string).
    #[default]
    Text,
    /// The reply is parsed as JSON (the model is asked for a JSON object) and that is the output.
    Json,
}

/// An `llm` step (docs/llm.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// The name of a `[models.<name>]` table of the file.
    pub model: String,
    /// The system message: a minijinja template over the request.
    #[serde(default)]
    pub system: Option<String>,
    /// The user message: a minijinja template over the request.
    pub prompt: String,
    /// Handler and synthesis only: the reply as text (default) or as parsed JSON.
    #[serde(default)]
    pub output: LlmOutput,
}

/// How a provider is asked for JSON (a plan, a verdict, `output = "json"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `response_format = {"type": "json_schema", ...}` with the schema (OpenAI, vLLM, Ollama,
    /// llama.cpp's server).
    #[default]
    JsonSchema,
    /// `response_format = {"type": "json_object"}`, the schema given in the system message.
    JsonObject,
}

/// A `[providers.<name>]` table: an OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The API's base URL; calls go to `{base_url}/chat/completions`. One of `base_url` and
    /// `base_url_env`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the base URL, read at start-up (one file for every
    /// endpoint: `OPENAI_BASE_URL`).
    #[serde(default)]
    pub base_url_env: Option<String>,
    /// The environment variable holding the API key (sent as `Authorization: Bearer`), read at
    /// start-up; a variable that is not set is a start-up error. None: no key sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Per-call time limit in milliseconds (default [`DEFAULT_TIMEOUT_MS`]).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How JSON answers are requested (default `json_schema`).
    #[serde(default)]
    pub structured_output: StructuredOutput,
    /// A PEM file of CA certificates trusted INSTEAD of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A `[models.<name>]` table: a model of a provider and its parameters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The name of a `[providers.<name>]` table.
    pub provider: String,
    /// The model as the provider names it (`gpt-4o-mini`).
    pub model: String,
    /// Sampling temperature (0 to 2); the provider's default when absent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Largest completion, in tokens; the provider's default when absent.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Price of a million prompt tokens, in the user's currency unit (for `usage.cost`).
    #[serde(default)]
    pub price_per_million_input: Option<f64>,
    /// Price of a million completion tokens, in the user's currency unit.
    #[serde(default)]
    pub price_per_million_output: Option<f64>,
    /// Calls started per minute by every worker together, at most (docs/llm.md#limits);
    /// none when absent (unless set in Redis).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Calls that may start at once after a quiet spell, on top of the steady rate (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Tokens (prompt + completion) per minute by every worker together, at most.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Calls in flight at once across every worker, at most.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Answer identical calls from Chorus's cache (docs/llm.md#the-call-cache); default: on
    /// when `temperature = 0` is given, off otherwise.
    #[serde(default)]
    pub cache: Option<bool>,
    /// How long a cached answer is used, in seconds (default one day, at most 30 days).
    #[serde(default)]
    pub cache_ttl_s: Option<u64>,
}
