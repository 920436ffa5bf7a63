//! Unit tests of kinds files: loading and its checks, the JSON conversions, and file kinds run
//! with builtin and command steps.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::json::to_json;
use super::{load, KindsFileError, LoadSettings};
use crate::kinds::{DynKind, HandlerContext, Registry, TaskView};
use crate::protocol::{self, TaskOptions};

const SETTINGS: LoadSettings = LoadSettings {
    max_answer_bytes: 1 << 20,
};

/// A kinds file with `text` in a fresh directory (kept for the test's life), and its path.
fn file(text: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("kinds.toml");
    std::fs::write(&path, text).expect("writes");
    (dir, path)
}

mod tempdir {
    //! A directory removed when dropped (std has none).
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "chorus-kinds-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("creates");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn refused(text: &str) -> KindsFileError {
    let (_dir, path) = file(text);
    match load(&path, &Registry::builtin(), SETTINGS) {
        Ok(_) => panic!("accepted: {text}"),
        Err(error) => error,
    }
}

fn view(kind: &str) -> TaskView {
    TaskView {
        id: "t1".to_owned(),
        kind: kind.to_owned(),
        options: TaskOptions::default().resolve().expect("resolves"),
        usage: crate::usage::UsageMeter::default(),
        budget: None,
        subtasks: Vec::new(),
    }
}

fn encoded(value: &serde_json::Value) -> Vec<u8> {
    protocol::encode(value).expect("encodes")
}

fn kind_of(text: &str) -> (tempdir::Dir, std::sync::Arc<dyn DynKind>) {
    let (dir, path) = file(text);
    let registry = Registry::builtin()
        .with_kinds_file(&path, SETTINGS)
        .expect("loads");
    let name = registry
        .names()
        .into_iter()
        .find(|n| !Registry::builtin().names().contains(n))
        .expect("a file kind");
    (dir, registry.get(&name).expect("registered"))
}

#[test]
fn an_error_names_the_file_the_kind_and_the_key_on_one_line() {
    let error = refused(
        "[kinds.stats.handlers.default]\ntype = \"command\"\nprogram = \"pyhton3-not-there\"\n",
    );
    assert_eq!(error.kind.as_deref(), Some("stats"));
    assert_eq!(error.key.as_deref(), Some("handlers.default.program"));
    let line = error.to_string();
    assert!(
        line.starts_with(&format!(
            "kinds file {}: kind \"stats\", key \"handlers.default.program\": ",
            error.path.display()
        )),
        "{line}"
    );
    assert!(line.contains("pyhton3-not-there"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn unknown_keys_are_refused_where_they_are() {
    let error = refused("[kinds.stats]\nplaner = { type = \"builtin\", kind = \"range-sum\" }\n");
    assert_eq!(error.kind.as_deref(), Some("stats"));
    assert!(error.message.contains("planer"), "{error}");
    let error = refused(
        "[kinds.stats.handlers.default]\ntype = \"command\"\nprogram = \"sh\"\nretries = 3\n",
    );
    assert_eq!(error.kind.as_deref(), Some("stats"));
    assert_eq!(error.key.as_deref(), Some("handlers.default"));
    assert!(error.message.contains("retries"), "{error}");
    assert!(error.message.contains("(line "), "{error}");
    let error = refused("[kind.stats]\n");
    assert_eq!(error.kind, None);
    assert!(error.message.contains("kind"), "{error}");
}

#[test]
fn definitions_that_cannot_run_are_refused() {
    let cases = [
        ("[kinds.stats]\ndescription = \"no handler\"\n", "handlers", "at least one handler"),
        (
            "[kinds.stats.handlers.gpu]\ntype = \"builtin\"\nkind = \"range-sum\"\n",
            "handlers",
            "\"default\" handler",
        ),
        (
            "[kinds.stats.handlers.default]\ntype = \"builtin\"\nkind = \"nope\"\n",
            "handlers.default.kind",
            "no Rust kind \"nope\"",
        ),
        (
            "[kinds.stats.handlers.default]\ntype = \"http\"\nurl = \"ftp://example.com/\"\n",
            "handlers.default.url",
            "",
        ),
        (
            "[kinds.stats.handlers.default]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\nheaders_from_env = { Authorization = \"CHORUS_TEST_UNSET_VARIABLE\" }\n",
            "handlers.default.headers_from_env.Authorization",
            "CHORUS_TEST_UNSET_VARIABLE",
        ),
    ];
    for (text, key, says) in cases {
        let error = refused(text);
        assert_eq!(error.kind.as_deref(), Some("stats"), "{text}");
        assert!(
            error.key.as_deref().is_some_and(|k| k.starts_with(key)),
            "{text}: {error}"
        );
        assert!(error.message.contains(says), "{text}: {error}");
    }
}

#[test]
fn kind_names_must_be_valid_and_new() {
    let error =
        refused("[kinds.range-sum.handlers.default]\ntype = \"builtin\"\nkind = \"range-sum\"\n");
    assert!(
        error.message.contains("clashes with the built-in kind"),
        "{error}"
    );
    let error =
        refused("[kinds.Stats.handlers.default]\ntype = \"builtin\"\nkind = \"range-sum\"\n");
    assert!(error.message.contains("kind name"), "{error}");
    let error = refused("[kinds.s]\nhandlers.default = { type = \"builtin\", kind = \"range-sum\" }\nhandlers.GPU = { type = \"builtin\", kind = \"range-sum\" }\n");
    assert_eq!(error.key.as_deref(), Some("handlers.GPU"));
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let error = load(
        Path::new("/nonexistent/kinds.toml"),
        &Registry::builtin(),
        SETTINGS,
    )
    .err()
    .expect("refused");
    assert!(error
        .to_string()
        .starts_with("kinds file /nonexistent/kinds.toml: cannot read it: "));
}

#[tokio::test]
async fn builtin_steps_run_the_rust_kind() {
    let (_dir, kind) = kind_of(
        "[kinds.sums]\nplanner = { type = \"builtin\", kind = \"range-sum\" }\n\
         handlers.default = { type = \"builtin\", kind = \"range-sum\" }\n\
         synthesis = { type = \"builtin\", kind = \"range-sum\" }\n",
    );
    assert!(!kind.inline());
    let input = encoded(&json!({"start": 1, "end": 10, "parts": 2}));
    let entries = kind.plan(&view("sums"), &input).expect("plans");
    assert_eq!(entries.len(), 2);
    let mut outputs = Vec::new();
    for entry in &entries {
        let context = HandlerContext {
            worker_type: "default".to_owned(),
            attempt: 1,
            max_attempts: 1,
            ..HandlerContext::default()
        };
        let output = kind.handle(&entry.payload, context).await.expect("handles");
        outputs.push((entry.id.clone(), output));
    }
    let total = kind
        .synthesize(&view("sums"), &input, outputs, &[])
        .expect("synthesizes");
    // range-sum's end is exclusive: 1 + ... + 9.
    assert_eq!(
        to_json(&total).expect("json"),
        json!({"sum": 45, "parts": 2})
    );
}

#[test]
fn the_default_planner_fans_out_input_items_and_the_default_synthesis_lists_outputs() {
    let (_dir, kind) =
        kind_of("[kinds.each.handlers.default]\ntype = \"builtin\"\nkind = \"range-sum\"\n");
    let entries = kind
        .plan(&view("each"), &encoded(&json!({"items": [{"a": 1}, 2]})))
        .expect("plans");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["0", "1"]);
    assert_eq!(entries[1].worker_type, "default");
    assert_eq!(
        protocol::decode::<serde_json::Value>(&entries[0].payload).expect("decodes"),
        json!({"a": 1})
    );
    let refused = kind
        .plan(&view("each"), &encoded(&json!({"item": []})))
        .expect_err("no items");
    assert!(refused.message().starts_with("input.items: "), "{refused}");
    let outputs = vec![
        ("0".to_owned(), encoded(&json!("x"))),
        ("1".to_owned(), encoded(&json!(2))),
    ];
    let listed = kind
        .synthesize(&view("each"), &encoded(&json!({})), outputs, &[])
        .expect("lists");
    assert_eq!(to_json(&listed).expect("json"), json!(["x", 2]));
}

/// A command step in the test's directory: a shell script answering `answer` (JSON) whatever
/// it is asked, and writing the request it got to `request.json`.
fn answering(dir: &Path, answer: &serde_json::Value) -> String {
    let script = dir.join("answer.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat > request.json\ncat <<'EOF'\n{answer}\nEOF\n"),
    )
    .expect("writes");
    let mut permissions = std::fs::metadata(&script).expect("exists").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).expect("chmod");
    "./answer.sh".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_planner_gets_the_task_and_its_subtasks_are_checked() {
    let dir = tempdir::Dir::new();
    let program = answering(
        dir.path(),
        &json!({"subtasks": [
            {"input": {"n": 1}},
            {"id": "b", "worker_type": "fetch", "input": 2, "depends_on": ["0"]},
            {"id": "c", "child": {"kind": "range-sum", "input": {"start": 1, "end": 2}}}
        ]}),
    );
    let path = dir.path().join("kinds.toml");
    std::fs::write(
        &path,
        format!(
            "[kinds.planned]\nplanner = {{ type = \"command\", program = \"{program}\" }}\n\
             handlers.default = {{ type = \"builtin\", kind = \"range-sum\" }}\n\
             handlers.fetch = {{ type = \"builtin\", kind = \"range-sum\" }}\n"
        ),
    )
    .expect("writes");
    let registry = Registry::builtin()
        .with_kinds_file(&path, SETTINGS)
        .expect("loads");
    let kind = registry.get("planned").expect("registered");
    let input = encoded(&json!({"rows": [1, 2]}));
    let planning = kind.clone();
    let entries = tokio::task::spawn_blocking(move || planning.plan(&view("planned"), &input))
        .await
        .expect("runs")
        .expect("plans");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["0", "b", "c"]);
    assert_eq!(entries[1].worker_type, "fetch");
    assert_eq!(entries[1].depends_on, ["0"]);
    assert_eq!(entries[2].child.as_ref().expect("child").kind, "range-sum");
    let request: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("request.json")).expect("request kept"),
    )
    .expect("json");
    assert_eq!(request["step"], "plan");
    assert_eq!(request["task"]["id"], "t1");
    assert_eq!(request["task"]["kind"], "planned");
    assert_eq!(request["task"]["input"], json!({"rows": [1, 2]}));
    assert_eq!(request["task"]["options"]["max_attempts"], 3);
    let steps = kind.steps();
    assert!(steps[0].1.starts_with("command "), "{steps:?}");
    assert_eq!(
        steps[1],
        ("handler default".to_owned(), "builtin range-sum".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_for_a_worker_type_without_handler_is_refused() {
    let dir = tempdir::Dir::new();
    let program = answering(dir.path(), &json!({"subtasks": [{"worker_type": "gpu"}]}));
    let path = dir.path().join("kinds.toml");
    std::fs::write(
        &path,
        format!(
            "[kinds.planned]\nplanner = {{ type = \"command\", program = \"{program}\" }}\n\
             handlers.default = {{ type = \"builtin\", kind = \"range-sum\" }}\n"
        ),
    )
    .expect("writes");
    let kind = Registry::builtin()
        .with_kinds_file(&path, SETTINGS)
        .expect("loads")
        .get("planned")
        .expect("registered");
    let error =
        tokio::task::spawn_blocking(move || kind.plan(&view("planned"), &encoded(&json!({}))))
            .await
            .expect("runs")
            .expect_err("refused");
    assert!(error.message().contains("worker type \"gpu\""), "{error}");
    assert!(!error.is_retryable());
}

#[test]
fn messagepack_values_have_a_json_form() {
    let value = rmpv::Value::Map(vec![
        (rmpv::Value::from(1), rmpv::Value::Binary(vec![0, 255])),
        (rmpv::Value::from("f"), rmpv::Value::F64(0.5)),
    ]);
    assert_eq!(
        to_json(&value).expect("json"),
        json!({"1": [0, 255], "f": 0.5})
    );
    assert!(to_json(&rmpv::Value::F64(f64::NAN)).is_err());
    assert!(to_json(&rmpv::Value::Ext(1, vec![])).is_err());
}

#[test]
fn a_file_kind_s_fingerprint_changes_with_its_definition_only() {
    let one = "[kinds.each.handlers.default]\ntype = \"builtin\"\nkind = \"range-sum\"\n";
    let same =
        "# a comment\n[kinds.each.handlers.default]\nkind = \"range-sum\"\ntype = \"builtin\"\n";
    let other = "[kinds.each]\ndescription = \"changed\"\n[kinds.each.handlers.default]\ntype = \"builtin\"\nkind = \"range-sum\"\n";
    let fingerprint = |text: &str| kind_of(text).1.fingerprint();
    let first = fingerprint(one);
    assert!(first.starts_with("file:each:"), "{first}");
    assert_eq!(fingerprint(same), first);
    assert_ne!(fingerprint(other), first);
}

#[test]
fn llm_providers_models_and_templates_are_checked_at_start_up() {
    let provider = "[providers.p]\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    let model = "[models.m]\nprovider = \"p\"\nmodel = \"x\"\n";
    let step = |body: &str| format!("[kinds.k.handlers.default]\ntype = \"llm\"\n{body}\n");
    let cases = [
        // (text, kind, key, message part)
        (
            format!(
                "{provider}{model}{}",
                step("model = \"nope\"\nprompt = \"hi\"")
            ),
            Some("k"),
            "handlers.default.model",
            "no model \"nope\"",
        ),
        (
            format!("{provider}[models.m]\nprovider = \"q\"\nmodel = \"x\"\n"),
            None,
            "models.m.provider",
            "no provider \"q\"",
        ),
        (
            "[providers.p]\nbase_url = \"ftp://h\"\n".to_owned(),
            None,
            "providers.p.base_url",
            "http",
        ),
        (
            "[providers.p]\nbase_url = \"http://h/v1\"\napi_key_env = \"CHORUS_UNSET_KEY_VAR\"\n"
                .to_owned(),
            None,
            "providers.p.api_key_env",
            "CHORUS_UNSET_KEY_VAR is not set",
        ),
        (
            format!("{provider}[models.m]\nprovider = \"p\"\nmodel = \"x\"\ntemperature = 3\n"),
            None,
            "models.m.temperature",
            "between 0 and 2",
        ),
        (
            format!(
                "{provider}{model}{}",
                step("model = \"m\"\nprompt = \"{% for %}\"")
            ),
            Some("k"),
            "handlers.default.prompt",
            "template error",
        ),
    ];
    for (text, kind, key, part) in cases {
        let error = refused(&text);
        assert_eq!(error.kind.as_deref(), kind, "{error}");
        assert_eq!(error.key.as_deref(), Some(key), "{error}");
        assert!(error.message.contains(part), "{error}");
    }
    let error = refused(&format!(
        "{provider}[models.m]\nprovider = \"p\"\nmodel = \"x\"\nrpm = 1\n"
    ));
    assert!(error.message.contains("rpm"), "{error}");
}

#[test]
fn the_llm_examples_load_given_their_two_variables() {
    // No other test reads these two variables.
    for (name, value) in [
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ("OPENAI_API_KEY", "k"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kinds/llm.toml");
    let kinds = load(&path, &Registry::builtin(), SETTINGS).expect("loads");
    let names: Vec<&str> = kinds.iter().map(DynKind::name).collect();
    assert_eq!(names, ["llm-report", "market-analysis"]);
}
