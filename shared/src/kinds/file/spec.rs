//! What a kinds file says, as serde types: `[kinds.<name>]` tables with their steps, the
//! `[providers.<name>]` and `[models.<name>]` of `llm` steps, every
//! table refusing keys it does not know (docs/kinds.md#the-kinds-file).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::steps::{ModelSpec, ProviderSpec, StepSpec};

/// A whole kinds file: `[kinds.<name>]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindsFileSpec {
    /// Kind definitions by kind name.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindSpec>,
    /// OpenAI-compatible endpoints by name, for `llm` steps (docs/llm.md).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Models by name, for `llm` steps.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
}

/// One kind's definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// A line for humans (`chorus kinds`).
    #[serde(default)]
    pub description: Option<String>,
    /// Plans a task; without it, one subtask per item of `input.items` on `default` workers.
    #[serde(default)]
    pub planner: Option<StepSpec>,
    /// Handlers by worker type; at least one.
    #[serde(default)]
    pub handlers: BTreeMap<String, StepSpec>,
    /// Reviews each round's outputs; without it, the first round is accepted.
    #[serde(default)]
    pub review: Option<StepSpec>,
    /// Combines the outputs; without it, the output is the list of outputs in plan order.
    #[serde(default)]
    pub synthesis: Option<StepSpec>,
}
