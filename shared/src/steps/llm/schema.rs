//! The JSON Schemas of what a model answers for a step (a plan, a review verdict, a JSON
//! output), validated with the `jsonschema` crate, and the `response_format` that asks a
//! provider for them (docs/llm.md#structured-answers).

use serde_json::{json, Value as Json};

use crate::steps::spec::StructuredOutput;

/// Validation errors quoted back to the model and in a rejection.
const MAX_ERRORS: usize = 5;

/// A schema and its compiled validator.
pub struct Schema {
    name: &'static str,
    json: Json,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schema({})", self.name)
    }
}

impl Schema {
    /// Compiles `json` (one of ours: a failure is a bug, reported as a message).
    ///
    /// # Errors
    /// The schema does not compile.
    pub fn new(name: &'static str, json: Json) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&json)
            .map_err(|e| format!("the {name} schema does not compile: {e}"))?;
        Ok(Self {
            name,
            json,
            validator,
        })
    }

    /// The plan a planner model answers: subtasks with an id, one of `worker_types`, an input
    /// object (free-form, with `requirements` and `context` suggested) and `depends_on`.
    ///
    /// # Errors
    /// As [`Schema::new`].
    pub fn plan(worker_types: &[String]) -> Result<Self, String> {
        Self::new(
            "plan",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["subtasks"],
                "properties": {"subtasks": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["id", "worker_type", "input", "depends_on"],
                        "properties": {
                            "id": {"type": "string", "minLength": 1},
                            "worker_type": {"enum": worker_types},
                            "input": {
                                "type": "object",
                                "properties": {
                                    "requirements": {"type": "string"},
                                    "context": {"type": "string"}
                                }
                            },
                            "depends_on": {"type": "array", "items": {"type": "string"}}
                        }
                    }
                }}
            }),
        )
    }

    /// A review model's verdict: accept, or the subtasks to redo with feedback.
    ///
    /// # Errors
    /// As [`Schema::new`].
    pub fn review() -> Result<Self, String> {
        Self::new(
            "review",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["accept"],
                "properties": {
                    "accept": {"type": "boolean"},
                    "redo": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["id", "feedback"],
                            "properties": {
                                "id": {"type": "string"},
                                "feedback": {"type": "string"}
                            }
                        }
                    }
                }
            }),
        )
    }

    /// Any JSON object (`output = "json"`).
    ///
    /// # Errors
    /// As [`Schema::new`].
    pub fn object() -> Result<Self, String> {
        Self::new("output", json!({"type": "object"}))
    }

    /// What the answer is (`plan`, `review`, `output`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The schema as JSON text (for a system message under `json_object`).
    pub fn text(&self) -> String {
        self.json.to_string()
    }

    /// The request's `response_format` for this schema.
    pub fn response_format(&self, structured: StructuredOutput) -> Json {
        match structured {
            // Not `strict`: OpenAI's strict mode refuses free-form objects (a subtask's input).
            StructuredOutput::JsonSchema => json!({
                "type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.json, "strict": false}
            }),
            StructuredOutput::JsonObject => json!({"type": "json_object"}),
        }
    }

    /// The model's reply as a valid instance: JSON (a Markdown code fence around it is
    /// tolerated) that the schema accepts.
    ///
    /// # Errors
    /// What is wrong, in one line: the JSON error, or up to [`MAX_ERRORS`] validation errors
    /// with the path of each (`/subtasks/0/worker_type: "x" is not one of [...]`).
    pub fn check(&self, reply: &str) -> Result<Json, String> {
        let value: Json = serde_json::from_str(unfenced(reply))
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(MAX_ERRORS)
            .map(|e| {
                let path = e.instance_path.to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(format!(
                "the {} does not follow its schema: {}",
                self.name,
                errors.join("; ")
            ))
        }
    }
}

/// `reply` without a surrounding Markdown code fence (```json ... ```), which models add even
/// when asked for bare JSON.
fn unfenced(reply: &str) -> &str {
    let trimmed = reply.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}
