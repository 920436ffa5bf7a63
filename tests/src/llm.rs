//! OpenAI-compatible servers for the tests of `llm` steps: llm-katan (a test server from PyPI,
//! installed by deploy/llm-katan.sh) in its echo backend, and the SCRIPTED test server
//! tests/fixtures/llm/scripted_server.py (canned completions), each on a port of its own, with
//! what they count of the requests that reached them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::repo_dir;

/// A server process, killed on drop, and its port.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

impl Server {
    /// Its Chat Completions base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// A free port on 127.0.0.1, never one handed out before in this test binary: tests run at
/// once, and a port the OS hands out again after its probe closed would put two servers on one
/// port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
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

/// The scripted test server on a free port.
pub fn scripted() -> Server {
    let mut child = Command::new("python3")
        .arg(repo_dir().join("tests/fixtures/llm/scripted_server.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    Server { child, port }
}

/// Every request body the scripted server at `port` received, in order.
pub async fn scripted_requests(port: u16) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{port}/requests");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// llm-katan (echo backend, model `gpt-test`) on a free port with `flags`, once it answers.
pub async fn katan(flags: &[&str]) -> Server {
    let output = Command::new(repo_dir().join("deploy/llm-katan.sh"))
        .output()
        .unwrap();
    assert!(output.status.success(), "deploy/llm-katan.sh failed");
    let program = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let stats = std::env::temp_dir().join(format!("katan-{}.json", uuid::Uuid::new_v4().simple()));
    let child = Command::new(program)
        .args(["--model", "echo", "--backend", "echo", "--name", "gpt-test"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--stats-file",
            stats.to_str().unwrap(),
            "--disable-dashboard",
        ])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "llm-katan did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// How many API requests reached llm-katan at `port` (`llm_katan_requests_total` of its
/// `/metrics`; its `/stats` counts only with its dashboard on).
pub async fn katan_requests(port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("llm_katan_requests_total{"))
        .unwrap_or_else(|| panic!("no llm_katan_requests_total in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
