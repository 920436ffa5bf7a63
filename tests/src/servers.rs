//! Test HTTP servers as child processes: the Python fixtures (which print the port they listen
//! on), and llm-katan (an OpenAI-compatible test server from PyPI, installed by
//! deploy/llm-katan.sh) with the request and token counters of its `/metrics`.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::repo_dir;

/// A server process, killed on drop, and the port it listens on.
pub struct Server {
    child: Child,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Where llm-katan's output goes (none for the Python fixtures).
    log: Option<PathBuf>,
}

impl Server {
    /// Starts `python3 script args...`, whose first line on stdout ends with the port it listens
    /// on (`listening on 127.0.0.1:PORT`, or just `PORT`).
    pub fn python(script: &Path, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{} printed {line:?}", script.display()));
        Self {
            child,
            port,
            log: None,
        }
    }

    /// How many requests llm-katan refused with `status` by its failure simulation (the lines
    /// of its log; its `/metrics` counts only answered completions).
    pub fn refused(&self, status: u16) -> usize {
        let text = self
            .log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default();
        let needle = format!("| {status} | simulated");
        text.lines().filter(|line| line.contains(&needle)).count()
    }

    /// Its Chat Completions base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// SIGKILLs the server now (the port is free once this returns).
    pub fn kill(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1, never one this test binary was handed before.
pub fn free_port() -> u16 {
    // Tests of one binary run at once: a port the OS hands out again after its probe closed
    // would put two servers on one port, and the second's test would talk to the first.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The SCRIPTED test server tests/fixtures/llm/scripted_server.py (canned completions, not a
/// model) on a free port.
pub fn scripted() -> Server {
    Server::python(
        &repo_dir().join("tests/fixtures/llm/scripted_server.py"),
        &[],
    )
}

/// Every request body the scripted server at `port` received, in order.
pub async fn scripted_requests(port: u16) -> Vec<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/requests");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The llm-katan executable (installed on first use by deploy/llm-katan.sh).
fn katan_program() -> String {
    let output = Command::new(repo_dir().join("deploy/llm-katan.sh"))
        .output()
        .unwrap();
    assert!(output.status.success(), "deploy/llm-katan.sh failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// llm-katan (echo backend, model `gpt-test`) on a free port with `flags`, once it answers.
pub async fn katan(flags: &[&str]) -> Server {
    katan_on(free_port(), flags).await
}

/// [`katan`] on a given `port` (e.g. the port of one killed before, as a provider restarted
/// with other settings).
pub async fn katan_on(port: u16, flags: &[&str]) -> Server {
    let program = katan_program();
    let name = uuid::Uuid::new_v4().simple().to_string();
    let stats = std::env::temp_dir().join(format!("katan-{name}.json"));
    let log = std::env::temp_dir().join(format!("katan-{name}.log"));
    let child = Command::new(program)
        .args(["--model", "echo", "--backend", "echo", "--name", "gpt-test"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--stats-file",
            stats.to_str().unwrap(),
            "--disable-dashboard",
        ])
        .args(flags)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        port,
        log: Some(log),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "llm-katan did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// What reached llm-katan and was answered with a completion (its `/metrics` counters since it
/// started; simulated failures are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KatanCounts {
    /// Completions answered.
    pub requests: u64,
    /// Prompt tokens of those completions.
    pub prompt_tokens: u64,
    /// Completion tokens of those completions.
    pub completion_tokens: u64,
}

/// How many requests llm-katan at `port` answered with a completion.
pub async fn katan_requests(port: u16) -> u64 {
    katan_counts(port).await.requests
}

/// llm-katan's counters at `port`.
pub async fn katan_counts(port: u16) -> KatanCounts {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let counter = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name}{{")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in llm-katan's /metrics:\n{text}"))
    };
    KatanCounts {
        requests: counter("llm_katan_requests_total"),
        prompt_tokens: counter("llm_katan_prompt_tokens_total"),
        completion_tokens: counter("llm_katan_completion_tokens_total"),
    }
}

/// The environment variable the tests' providers read their API key from (llm-katan wants an
/// `Authorization` header; any key does).
pub const LLM_KEY_VAR: &str = "CHORUS_TEST_LLM_KEY";

/// An `llm` handler step, built as a kinds file would, saying `Say {{ subtask.input.word }}` to
/// `model` (its `provider` is replaced by `katan`) at llm-katan on `port`, with a provider
/// timeout of `timeout_ms` and its key from [`LLM_KEY_VAR`].
pub fn katan_step(
    port: u16,
    timeout_ms: u64,
    model: chorus_shared::steps::ModelSpec,
) -> chorus_shared::steps::Step {
    use chorus_shared::steps::{LlmOutput, LlmSpec, ProviderSpec, Step, StructuredOutput};
    let providers = std::collections::BTreeMap::from([(
        "katan".to_owned(),
        ProviderSpec {
            base_url: Some(format!("http://127.0.0.1:{port}/v1")),
            base_url_env: None,
            api_key_env: Some(LLM_KEY_VAR.to_owned()),
            timeout_ms: Some(timeout_ms),
            structured_output: StructuredOutput::JsonObject,
            ca_file: None,
        },
    )]);
    let model = chorus_shared::steps::ModelSpec {
        provider: "katan".to_owned(),
        ..model
    };
    let models = std::collections::BTreeMap::from([("echo".to_owned(), model)]);
    let catalog = chorus_shared::steps::llm::Catalog::build(
        &providers,
        &models,
        Path::new("."),
        &Default::default(),
    )
    .unwrap();
    let spec = LlmSpec {
        model: "echo".to_owned(),
        system: None,
        prompt: "Say {{ subtask.input.word }}".to_owned(),
        output: LlmOutput::Text,
    };
    Step::build_llm(&spec, &catalog, &["default".to_owned()]).unwrap()
}
