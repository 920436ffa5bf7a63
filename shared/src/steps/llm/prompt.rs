//! Prompt templates of `llm` steps: minijinja (Jinja2's syntax), rendered with the step's
//! request (docs/kinds.md#the-json-contract) as the context, so every field the contract gives
//! a step is a template variable (docs/llm.md#templates).

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::steps::command::config_error;
use crate::steps::{StepConfigError, StepError};

/// The `system` and `prompt` templates of one step, parsed.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    system: bool,
}

impl Templates {
    /// Parses `system` (optional) and `prompt`.
    ///
    /// # Errors
    /// [`StepConfigError`] naming `system` or `prompt`, with minijinja's message (line included).
    pub fn build(system: Option<&str>, prompt: &str) -> Result<Self, StepConfigError> {
        let mut env = Environment::new();
        // One template serves every round and step: a field a request lacks (`feedback` before
        // any review) renders empty instead of failing the call.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        if let Some(system) = system {
            env.add_template_owned("system", system.to_owned())
                .map_err(|e| config_error("system", format!("template error: {e:#}")))?;
        }
        env.add_template_owned("prompt", prompt.to_owned())
            .map_err(|e| config_error("prompt", format!("template error: {e:#}")))?;
        Ok(Self {
            env,
            system: system.is_some(),
        })
    }

    /// The system message (when there is a `system` template) and the user message, rendered
    /// with `request` as the context.
    ///
    /// # Errors
    /// [`StepError::Fatal`]: a template failed at render time (a filter given a wrong type).
    pub fn render(&self, request: &Json) -> Result<(Option<String>, String), StepError> {
        let context = Value::from_serialize(request);
        let render = |name: &str| {
            self.env
                .get_template(name)
                .and_then(|template| template.render(&context))
                .map_err(|e| StepError::Fatal {
                    message: format!("the {name} template failed: {e:#}"),
                })
        };
        let system = if self.system {
            Some(render("system")?)
        } else {
            None
        };
        Ok((system, render("prompt")?))
    }
}
