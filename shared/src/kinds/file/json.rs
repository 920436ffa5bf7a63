//! The JSON side of a file-defined kind: MessagePack values (how subtasks and outputs travel)
//! to and from JSON (what steps read and write), and the subtask entries steps answer with
//! (docs/kinds.md#the-json-contract).

use serde::Deserialize;
use serde_json::{Map, Number, Value as Json};

use crate::kinds::{KindError, Planned, Work};
use crate::protocol::{self, ChildSpec, TaskOptions};

/// MessagePack `bytes` (a task's input, a subtask, an output) as JSON; `what` names them in
/// the error.
///
/// # Errors
/// The bytes do not decode, or hold what JSON cannot say (see [`to_json`]).
pub fn decode_json(bytes: &[u8], what: &str) -> Result<Json, KindError> {
    let value = rmpv::decode::read_value(&mut &bytes[..])
        .map_err(|e| KindError::fatal(format!("{what} does not decode: {e}")))?;
    to_json(&value).map_err(|e| KindError::fatal(format!("{what} has no JSON form: {e}")))
}

/// A MessagePack value as JSON. Binary data (only Rust kinds produce it) becomes an array of
/// numbers (0 to 255); a map key that is not a string becomes its JSON text (`1` → `"1"`).
///
/// # Errors
/// A float that is NaN or infinite, an extension type, a string that is not UTF-8.
pub fn to_json(value: &rmpv::Value) -> Result<Json, String> {
    Ok(match value {
        rmpv::Value::Nil => Json::Null,
        rmpv::Value::Boolean(b) => Json::Bool(*b),
        rmpv::Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Json::from(n),
            (None, Some(n)) => Json::from(n),
            (None, None) => return Err(format!("integer {i} out of range")),
        },
        rmpv::Value::F32(f) => float(f64::from(*f))?,
        rmpv::Value::F64(f) => float(*f)?,
        rmpv::Value::String(s) => match s.as_str() {
            Some(s) => Json::String(s.to_owned()),
            None => return Err("a string that is not UTF-8".to_owned()),
        },
        rmpv::Value::Binary(bytes) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
        rmpv::Value::Array(items) => {
            Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        rmpv::Value::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, item) in entries {
                let key = match key {
                    rmpv::Value::String(s) if s.as_str().is_some() => {
                        s.as_str().unwrap_or_default().to_owned()
                    }
                    other => to_json(other)?.to_string(),
                };
                map.insert(key, to_json(item)?);
            }
            Json::Object(map)
        }
        rmpv::Value::Ext(kind, _) => return Err(format!("MessagePack extension type {kind}")),
    })
}

fn float(f: f64) -> Result<Json, String> {
    Number::from_f64(f)
        .map(Json::Number)
        .ok_or_else(|| format!("float {f} has no JSON form"))
}

/// A JSON value as MessagePack bytes, the way a file-defined kind's subtasks and outputs are
/// stored.
///
/// # Errors
/// Never in practice (every JSON value has a MessagePack form); named for the message.
pub fn encode_json(value: &Json, what: &str) -> Result<Vec<u8>, KindError> {
    protocol::encode(value).map_err(|e| KindError::fatal(format!("cannot encode {what}: {e}")))
}

/// A JSON value as a MessagePack value (a synthesized output, a child's input).
///
/// # Errors
/// As [`encode_json`].
pub fn json_value(value: &Json, what: &str) -> Result<rmpv::Value, KindError> {
    let bytes = encode_json(value, what)?;
    rmpv::decode::read_value(&mut &bytes[..])
        .map_err(|e| KindError::fatal(format!("{what} does not re-read: {e}")))
}

/// One subtask as a planner, review or handler answers it (`SubtaskSpec` of docs/kinds.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskSpec {
    /// Subtask id; default: its position.
    #[serde(default)]
    pub id: Option<String>,
    /// Worker type; default `default`.
    #[serde(default)]
    pub worker_type: Option<String>,
    /// The handler's input.
    #[serde(default)]
    pub input: Json,
    /// Subtasks that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// A child task instead of a handler run.
    #[serde(default)]
    pub child: Option<ChildJson>,
}

/// A child task as a step names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildJson {
    /// Its kind.
    pub kind: String,
    /// Its input.
    #[serde(default)]
    pub input: Json,
    /// Its options (as a task request's `options`).
    #[serde(default)]
    pub options: Option<TaskOptions>,
}

impl SubtaskSpec {
    /// The subtask as the services plan it, its input kept as JSON.
    ///
    /// # Errors
    /// A child given an `input` besides, or a child input with no MessagePack form.
    pub fn into_planned(self) -> Result<Planned<Json>, KindError> {
        let work = match self.child {
            Some(child) => {
                if !self.input.is_null() {
                    return Err(KindError::fatal(
                        "a subtask has both \"input\" and \"child\"; a child's input goes in child.input",
                    ));
                }
                Work::Child(ChildSpec {
                    kind: child.kind,
                    input: json_value(&child.input, "child input")?,
                    options: child.options,
                })
            }
            None => Work::Handler(self.input),
        };
        Ok(Planned {
            id: self.id,
            worker_type: self.worker_type,
            depends_on: self.depends_on,
            work,
        })
    }
}

/// A plan answer: `{"subtasks": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAnswer {
    /// The plan, in order.
    pub subtasks: Vec<SubtaskSpec>,
    /// What the step's calls used (docs/kinds.md#usage): accepted here, accounted by the
    /// services' usage accounting.
    #[serde(default, rename = "usage")]
    pub _usage: serde::de::IgnoredAny,
}

/// A handle answer: `{"output": ..., "spawn": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleAnswer {
    /// The subtask's output.
    pub output: Json,
    /// Subtasks added to the task.
    #[serde(default)]
    pub spawn: Vec<SubtaskSpec>,
    /// What the step's calls used (docs/kinds.md#usage): accepted here, accounted by the
    /// services' usage accounting.
    #[serde(default, rename = "usage")]
    pub _usage: serde::de::IgnoredAny,
}

/// A review answer: `{"accept": true}` or `{"accept": false, "subtasks": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewAnswer {
    /// Whether the round's outputs are final.
    pub accept: bool,
    /// Subtasks redone (existing ids) or added, when not accepted.
    #[serde(default)]
    pub subtasks: Vec<SubtaskSpec>,
    /// What the step's calls used (docs/kinds.md#usage): accepted here, accounted by the
    /// services' usage accounting.
    #[serde(default, rename = "usage")]
    pub _usage: serde::de::IgnoredAny,
}

/// A synthesis answer: `{"output": ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesisAnswer {
    /// The task's output.
    pub output: Json,
    /// What the step's calls used (docs/kinds.md#usage): accepted here, accounted by the
    /// services' usage accounting.
    #[serde(default, rename = "usage")]
    pub _usage: serde::de::IgnoredAny,
}

/// `answer` (JSON bytes a step returned) read as `T`; `step` names the step in the error,
/// which is fatal and quotes what did not fit.
///
/// # Errors
/// The answer is not the shape the contract gives for the step.
pub fn read_answer<T: serde::de::DeserializeOwned>(
    answer: &[u8],
    step: &str,
) -> Result<T, KindError> {
    serde_json::from_slice(answer).map_err(|e| {
        KindError::fatal(format!(
            "the {step} step's answer does not follow the contract (docs/kinds.md): {e}; it begins {}",
            crate::text::quoted(&String::from_utf8_lossy(
                &answer[..answer.len().min(crate::steps::answer::QUOTED_BYTES)]
            ))
        ))
    })
}
