//! Kinds defined in a kinds file (TOML, `--kinds-file`) instead of Rust: the file's types
//! (`spec.rs`), its loading and every start-up check ([`load`]), and [`FileKind`], a kind whose
//! steps are commands, HTTP endpoints or a Rust kind's steps (`kind.rs`), speaking the JSON
//! contract of docs/kinds.md (`json.rs`).

mod json;
mod kind;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use kind::FileKind;
pub use spec::{KindSpec, KindsFileSpec};

use super::{DynKind, Registry};
use crate::protocol::{self, DEFAULT_WORKER_TYPE};
use crate::steps::{llm, Step, StepSpec};

/// A kinds file that cannot be used, as the one line a service prints before exiting 64:
/// `kinds file <path>: kind "csv-stats", key "handlers.default.program": <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kinds file {}: {}{}", .path.display(), where_of(.kind.as_deref(), .key.as_deref()), .message)]
pub struct KindsFileError {
    /// The file.
    pub path: PathBuf,
    /// The kind at fault, when one is.
    pub kind: Option<String>,
    /// The key at fault, relative to the kind's table (`handlers.default.program`), or to the
    /// file when no kind is named.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn where_of(kind: Option<&str>, key: Option<&str>) -> String {
    match (kind, key) {
        (Some(kind), Some(key)) => format!("kind {kind:?}, key {key:?}: "),
        (Some(kind), None) => format!("kind {kind:?}: "),
        (None, Some(key)) => format!("key {key:?}: "),
        (None, None) => String::new(),
    }
}

/// Settings of the service a kinds file is loaded into.
#[derive(Debug, Clone, Copy)]
pub struct LoadSettings {
    /// The largest answer a step may give, in bytes (the service's `--max-message-bytes`).
    pub max_answer_bytes: usize,
}

/// Reads, checks and builds the kinds of the file at `path`; `registry` holds the Rust kinds
/// that `builtin` steps name and that file kinds may not shadow. Checks (the rules of
/// docs/kinds.md#checks): TOML syntax, unknown keys, valid kind and worker type names, no clash
/// with a kind of `registry`, at least one handler, a `default` handler when there is no
/// planner, every step buildable ([`Step::build`]: program found, URL valid, env vars set),
/// `builtin` steps naming a kind of `registry`.
///
/// # Errors
/// The first problem found, naming the file, the kind and the key.
pub fn load(
    path: &Path,
    registry: &Registry,
    settings: LoadSettings,
) -> Result<Vec<FileKind>, KindsFileError> {
    let error = |kind: Option<&str>, key: Option<String>, message: String| KindsFileError {
        path: path.to_owned(),
        kind: kind.map(str::to_owned),
        key,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(None, None, format!("cannot read it: {e}")))?;
    let spec = parse(&text).map_err(|(kind, key, message)| error(kind.as_deref(), key, message))?;
    let base_dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let catalog = llm::Catalog::build(
        &spec.providers,
        &spec.models,
        &base_dir,
        registry.llm_store(),
    )
    .map_err(|(key, message)| error(None, Some(key), message))?;
    let context = BuildContext {
        base_dir: &base_dir,
        registry,
        catalog: &catalog,
    };
    let tables = kind_tables(&text);
    spec.kinds
        .iter()
        .map(|(name, kind)| {
            build_kind(name, kind, &context, settings)
                .map(|built| built.with_fingerprint(fingerprint(name, tables.get(name))))
                .map_err(|(key, message)| error(Some(name), key, message))
        })
        .collect()
}

/// Each kind's table of the file (`[kinds.<name>]`), by name; empty if the text does not parse
/// as a table (it did as the spec, so it does).
fn kind_tables(text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|mut file| file.remove("kinds"))
        .and_then(|kinds| match kinds {
            toml::Value::Table(kinds) => Some(kinds),
            _ => None,
        })
        .unwrap_or_default()
}

/// A file kind's fingerprint (docs/operations.md, "Rolling out a kind"):
/// `file:<name>:<SHA-256 of its table>`, the table written back as TOML with its keys sorted,
/// so that layout, comments and key order do not count, every value does. The programs and
/// scripts a step runs are not part of it: a changed script behind an unchanged table is the
/// same definition.
fn fingerprint(name: &str, table: Option<&toml::Value>) -> String {
    use sha2::Digest;
    let canonical = table.map(ToString::to_string).unwrap_or_default();
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    format!("file:{name}:{}", &hex::encode(digest)[..16])
}

/// The file's text as its spec, or where it is wrong: `(kind, key, message)`.
fn parse(text: &str) -> Result<KindsFileSpec, (Option<String>, Option<String>, String)> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| (None, None, one_line(text, &e)))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let segments: Vec<String> = e.path().iter().map(ToString::to_string).collect();
        let message = one_line(text, e.inner());
        match segments.as_slice() {
            [kinds, kind, rest @ ..] if kinds == "kinds" => {
                let key = (!rest.is_empty()).then(|| rest.join("."));
                (Some(kind.clone()), key, message)
            }
            _ => {
                let key = (!segments.is_empty() && segments != ["?"]).then(|| segments.join("."));
                (None, key, message)
            }
        }
    })
}

/// A TOML error as one line, with the line number it points at.
fn one_line(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    }
}

/// Whether `name` may name a kind: the characters of worker types (a-z, 0-9, `-`, `_`).
fn check_kind_name(name: &str) -> Result<(), String> {
    protocol::validate_worker_type(name).map_err(|_| {
        format!(
            "kind name {name:?} must be 1 to {} characters of a-z, 0-9, '-' and '_'",
            protocol::MAX_WORKER_TYPE_BYTES
        )
    })
}

/// A step of a file kind, ready to call: external, or a Rust kind's.
#[derive(Clone)]
pub(crate) enum StepRef {
    /// A command or HTTP step.
    External(Step),
    /// The same step of this Rust kind of the registry.
    Builtin(Arc<dyn DynKind>),
}

impl StepRef {
    /// One line for `chorus kinds`.
    fn describe(&self) -> String {
        match self {
            Self::External(step) => step.describe(),
            Self::Builtin(kind) => format!("builtin {}", kind.name()),
        }
    }
}

/// What building a kind's steps needs from its file and service.
struct BuildContext<'a> {
    /// The kinds file's directory.
    base_dir: &'a Path,
    /// The Rust kinds `builtin` steps name.
    registry: &'a Registry,
    /// The file's providers and models (`llm` steps).
    catalog: &'a llm::Catalog,
}

/// Builds the step at `key` of a kind whose handlers serve `worker_types`, or says what is
/// wrong with it as `(key, message)`.
fn build_step(
    key: &str,
    spec: &StepSpec,
    context: &BuildContext<'_>,
    worker_types: &[String],
) -> Result<StepRef, (Option<String>, String)> {
    let (base_dir, registry) = (context.base_dir, context.registry);
    match spec {
        StepSpec::Llm(llm) => Step::build_llm(llm, context.catalog, worker_types)
            .map(StepRef::External)
            .map_err(|e| (Some(format!("{key}.{}", e.key)), e.message)),
        StepSpec::Builtin(builtin) => registry
            .get(&builtin.kind)
            .map(StepRef::Builtin)
            .ok_or_else(|| {
                (
                    Some(format!("{key}.kind")),
                    format!(
                        "no Rust kind {:?} in this service (it has: {})",
                        builtin.kind,
                        registry.names().join(", ")
                    ),
                )
            }),
        other => Step::build(other, base_dir)
            .map(StepRef::External)
            .map_err(|e| (Some(format!("{key}.{}", e.key)), e.message)),
    }
}

/// Checks and builds kind `name`.
fn build_kind(
    name: &str,
    spec: &KindSpec,
    context: &BuildContext<'_>,
    settings: LoadSettings,
) -> Result<FileKind, (Option<String>, String)> {
    let registry = context.registry;
    let worker_types: Vec<String> = spec.handlers.keys().cloned().collect();
    check_kind_name(name).map_err(|m| (None, m))?;
    if registry.get(name).is_some() {
        return Err((
            None,
            format!("clashes with the built-in kind {name:?}; give it another name"),
        ));
    }
    if spec.handlers.is_empty() {
        return Err((
            Some("handlers".to_owned()),
            "a kind needs at least one handler ([kinds.<name>.handlers.default])".to_owned(),
        ));
    }
    if spec.planner.is_none() && !spec.handlers.contains_key(DEFAULT_WORKER_TYPE) {
        return Err((
            Some("handlers".to_owned()),
            "a kind without a planner needs a \"default\" handler (the default planner sends every item there)".to_owned(),
        ));
    }
    let mut handlers = BTreeMap::new();
    for (worker_type, step) in &spec.handlers {
        let key = format!("handlers.{worker_type}");
        protocol::validate_worker_type(worker_type)
            .map_err(|e| (Some(key.clone()), e.to_string()))?;
        handlers.insert(
            worker_type.clone(),
            build_step(&key, step, context, &worker_types)?,
        );
    }
    let optional = |key: &str, step: &Option<StepSpec>| {
        step.as_ref()
            .map(|step| build_step(key, step, context, &worker_types))
            .transpose()
    };
    Ok(FileKind::new(
        name.to_owned(),
        spec.description.clone(),
        kind::Steps {
            planner: optional("planner", &spec.planner)?,
            handlers,
            review: optional("review", &spec.review)?,
            synthesis: optional("synthesis", &spec.synthesis)?,
        },
        settings,
    ))
}

impl Registry {
    /// This registry plus the kinds of the kinds file at `path` ([`load`]); `builtin` steps
    /// name kinds of this registry.
    ///
    /// # Errors
    /// The file cannot be used ([`load`]).
    pub fn with_kinds_file(
        mut self,
        path: &Path,
        settings: LoadSettings,
    ) -> Result<Self, KindsFileError> {
        for kind in load(path, &self, settings)? {
            self.insert(Arc::new(kind));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests;
