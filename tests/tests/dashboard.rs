//! `chorus dashboard` in a real headless Chromium (Debian's `chromium` through `chromedriver`,
//! installed by deploy/browser.sh) against the real services: the tasks page and its filters,
//! a running task's page turning a graph node green through server-sent events without a
//! reload, a finished task's page (its kept graph, progress matching the store, errors), and
//! the dead-letter page (hostile text escaped, Requeue sends a letter back and it is
//! processed). Screenshots go to `.chorus/screenshots/`.

#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use chorus_tests::{repo_dir, servers::free_port, services, TestEnv};
use fantoccini::{Client, ClientBuilder, Locator};
use lapin::{
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde_json::{json, Value};

/// The dashboard's and chromedriver's ports: free ones, picked once per run, so that two runs
/// on one machine never meet.
fn ports() -> (u16, u16) {
    static PORTS: OnceLock<(u16, u16)> = OnceLock::new();
    *PORTS.get_or_init(|| (free_port(), free_port()))
}
/// Longest wait for one browser command or one condition.
const STEP: Duration = Duration::from_secs(20);

/// Chromium's flags: headless, and nothing that reaches out (it hangs on a closed network).
const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

/// `future`, or a panic naming `what` after [`STEP`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?} waiting for {what}"))
}

/// Polls `check` every 200 ms until it returns `Some`, for at most [`STEP`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(found) = bounded(what, check()).await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {STEP:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn http_ok(url: &str) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A WebDriver session of a fresh headless Chromium.
async fn browser(profile: &std::path::Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    bounded(
        "a chromium session",
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", ports().1)),
    )
    .await
    .unwrap()
}

async fn goto(browser: &Client, path: &str) {
    let url = format!("http://127.0.0.1:{}{path}", ports().0);
    bounded(&format!("page {path}"), browser.goto(&url))
        .await
        .unwrap();
}

async fn text_of(browser: &Client, css: &str) -> String {
    let element = bounded(css, browser.find(Locator::Css(css))).await.unwrap();
    bounded(css, element.text()).await.unwrap()
}

async fn class_of(browser: &Client, css: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.attr("class").await.ok()?
}

async fn count(browser: &Client, css: &str) -> usize {
    bounded(css, browser.find_all(Locator::Css(css)))
        .await
        .unwrap()
        .len()
}

async fn screenshot(browser: &Client, name: &str) {
    let png = bounded("a screenshot", browser.screenshot()).await.unwrap();
    let dir = repo_dir().join(".chorus/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// `chorus status ID` as JSON.
async fn status(env: &TestEnv, id: &str) -> Value {
    let (code, out) = env.cli(&["status", id]).await;
    assert_eq!(code, 0, "status {id}: {out}");
    serde_json::from_str(&out).unwrap()
}

async fn submit(env: &TestEnv, id: &str, input: Value, extra: &[&str], wait: bool) -> i32 {
    let input = input.to_string();
    let mut args = vec![
        "submit",
        "--kind",
        "range-sum",
        "--id",
        id,
        "--input",
        &input,
    ];
    args.extend_from_slice(extra);
    if wait {
        args.push("--wait");
    }
    let (code, out) = env.cli(&args).await;
    assert!(code == 0 || !wait || code == 1, "submit {id}: {code} {out}");
    code
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_real_browser() {
    let mut env = TestEnv::new("dashboard").await;
    env.start_system(1);
    let profile = services().state_dir.join(format!("chromium-{}", env.vhost));
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={}", ports().1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (deploy/browser.sh installs it)"),
    );
    let listen = format!("127.0.0.1:{}", ports().0);
    env.spawn("chorus", &["dashboard", "--listen", &listen]);
    let home = format!("http://{listen}/tasks");
    until("the dashboard to serve", || async {
        http_ok(&home).await.then_some(())
    })
    .await;
    let driver = format!("http://127.0.0.1:{}/status", ports().1);
    until("chromedriver", || async {
        http_ok(&driver).await.then_some(())
    })
    .await;

    // A finished task, a failed one, and one slow enough to watch: a chain of 5 subtasks, 2 s each.
    submit(
        &env,
        "dash-done",
        json!({"start": 0, "end": 30, "parts": 3, "chain": true}),
        &[],
        true,
    )
    .await;
    let failed = submit(
        &env,
        "dash-failed",
        json!({"start": 0, "end": 10, "parts": 2, "fail_attempts": 9}),
        &["--max-attempts", "1"],
        true,
    )
    .await;
    assert_eq!(failed, 1, "dash-failed fails");
    submit(
        &env,
        "dash-live",
        json!({"start": 0, "end": 50, "parts": 5, "chain": true, "delay_ms": 2000}),
        &[],
        false,
    )
    .await;

    let browser = browser(&profile).await;
    tasks_page(&browser).await;
    live_task_page(&env, &browser).await;
    dead_letters(&env, &browser).await;
    bounded("closing chromium", browser.close()).await.unwrap();
}

/// The tasks page lists the three tasks; the filters narrow it.
async fn tasks_page(browser: &Client) {
    // The tasks page lists the three; the status filter narrows it (a plain GET form).
    goto(browser, "/tasks").await;
    until("the three tasks listed", || async {
        let text = text_of(browser, "#tasks").await;
        ["dash-done", "dash-failed", "dash-live"]
            .iter()
            .all(|id| text.contains(id))
            .then_some(())
    })
    .await;
    screenshot(browser, "tasks").await;
    goto(browser, "/tasks?status=failed").await;
    let listed = text_of(browser, "#tasks").await;
    assert!(listed.contains("dash-failed"), "{listed}");
    assert!(
        !listed.contains("dash-done") && !listed.contains("dash-live"),
        "{listed}"
    );
    goto(browser, "/tasks?kind=nope").await;
    assert!(text_of(browser, "#tasks").await.contains("No task matches"));
}

/// dash-live's page while it runs and once finished; dash-failed's page.
async fn live_task_page(env: &TestEnv, browser: &Client) {
    // The running task: five nodes; one not yet succeeded turns green without a reload (a
    // marker set in the page survives), fed by the event stream.
    goto(browser, "/tasks/dash-live").await;
    assert_eq!(count(browser, "svg g.node").await, 5);
    bounded(
        "a marker",
        browser.execute("window.chorusMarker = 1;", vec![]),
    )
    .await
    .unwrap();
    let mut watched = None;
    for index in 0..4 {
        let class = class_of(browser, &format!("svg [data-node=\"{index}\"]"))
            .await
            .unwrap();
        if !class.contains("st-succeeded") {
            watched = Some(index);
            break;
        }
    }
    let watched = watched.expect("a node of dash-live not yet succeeded when the page loaded");
    screenshot(browser, "task-running").await;
    let css = format!("svg [data-node=\"{watched}\"]");
    until("a node to turn succeeded live", || async {
        class_of(browser, &css)
            .await
            .filter(|c| c.contains("st-succeeded"))
    })
    .await;
    let marker = bounded(
        "the marker",
        browser.execute("return window.chorusMarker || 0;", vec![]),
    )
    .await
    .unwrap();
    assert_eq!(marker, json!(1), "the node changed without a reload");

    // Once finished the page reloads itself: the kept graph, all green, progress as stored.
    until("dash-live's page to show it succeeded", || async {
        let state = text_of(browser, "#state").await;
        (state == "succeeded").then_some(())
    })
    .await;
    assert_eq!(count(browser, "svg g.node.st-succeeded").await, 5);
    let stored = status(env, "dash-live").await;
    let row = text_of(browser, "#progress tbody tr").await;
    let succeeded = stored["types"][0]["succeeded"].as_u64().unwrap();
    assert_eq!(succeeded, 5, "{stored}");
    assert!(row.contains(&format!("{} 0 0 0 0 5", succeeded)), "{row}");
    screenshot(browser, "task-finished").await;

    // A failed task: its failed nodes are red and its errors listed.
    goto(browser, "/tasks/dash-failed").await;
    assert_eq!(text_of(browser, "#state").await, "failed");
    assert!(count(browser, "svg g.node.st-failed").await >= 1);
    assert!(!text_of(browser, "#errors").await.is_empty());
}

/// The dead-letter page: a letter with a hostile reason is shown as text, and its Requeue
/// button sends it back to chorus.tasks, where it runs.
async fn dead_letters(env: &TestEnv, browser: &Client) {
    let client = env.client().await;
    // As the orchestrator would have dead-lettered a request it could not serve then.
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-chorus-reason"),
        AMQPValue::LongString("<img id=\"pwned\" src=x> kind unavailable".into()),
    );
    headers.insert(
        ShortString::from("x-chorus-queue"),
        AMQPValue::LongString("chorus.tasks".into()),
    );
    headers.insert(
        ShortString::from("x-chorus-task"),
        AMQPValue::LongString("dash-requeued".into()),
    );
    let request = json!({
        "id": "dash-requeued",
        "kind": "range-sum",
        "input": {"start": 0, "end": 4, "parts": 2},
    });
    client
        .publish(
            "chorus.dead",
            request.to_string().as_bytes(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_headers(headers),
        )
        .await;
    goto(browser, "/dead").await;
    let table = text_of(browser, "#dead").await;
    assert!(
        table.contains("<img id=\"pwned\" src=x> kind unavailable"),
        "{table}"
    );
    assert!(table.contains("dash-requeued"), "{table}");
    assert_eq!(
        count(browser, "#pwned").await,
        0,
        "a reason is text, never markup"
    );
    screenshot(browser, "dead").await;
    // The failed subtasks of dash-failed are there too (copies of failures): pick ours.
    let rows = bounded("the letters", browser.find_all(Locator::Css("tr.letter")))
        .await
        .unwrap();
    let mut button = None;
    for row in rows {
        if bounded("a letter", row.text())
            .await
            .unwrap()
            .contains("dash-requeued")
        {
            button = Some(
                bounded(
                    "its Requeue button",
                    row.find(Locator::Css("button.requeue")),
                )
                .await
                .unwrap(),
            );
        }
    }
    let button = button.expect("the letter of dash-requeued");
    bounded("pressing Requeue", button.click()).await.unwrap();
    // The click returns once the form is sent; the page with the notice may come later.
    let notice = until("the page saying the letter was requeued", || async {
        let element = browser.find(Locator::Css("#notice")).await.ok()?;
        element.text().await.ok()
    })
    .await;
    assert!(
        notice.starts_with("Requeued") && notice.contains("chorus.tasks"),
        "{notice}"
    );
    until("the requeued task to run", || async {
        let (code, out) = env.cli(&["result", "dash-requeued"]).await;
        (code == 0).then_some(out)
    })
    .await;
    goto(browser, "/tasks/dash-requeued").await;
    assert_eq!(text_of(browser, "#state").await, "succeeded");
}

/// A large task's kept graph is bounded: the first `KEPT_NODES` subtasks of its plan, with the
/// plan's size, and its page draws the first `MAX_DRAWN` saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_tasks_kept_graph_is_bounded() {
    use chorus_shared::admin::{dashboard::svg::MAX_DRAWN, graph};
    let mut env = TestEnv::new("dashboard-large").await;
    env.start_system(1);
    let parts = graph::KEPT_NODES + 100;
    let input = json!({"start": 0, "end": parts, "parts": parts});
    submit(&env, "dash-large", input, &["--batch-size", "100"], true).await;
    let store = chorus_shared::store::Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    // A small task's copy is built from what its last results read with the synthesis lease,
    // a large one's (more results than come with the lease) read before the outcome: both kept.
    let small = json!({"start": 0, "end": 3, "parts": 3});
    submit(&env, "dash-small", small, &[], true).await;
    let (kept, total) = graph::kept(&store, "dash-small").await.unwrap().unwrap();
    assert_eq!((total, kept.nodes.len()), (3, 3));
    assert!(kept
        .nodes
        .iter()
        .all(|n| n.state == graph::NodeState::Succeeded));
    let (kept, total) = graph::kept(&store, "dash-large").await.unwrap().unwrap();
    assert_eq!(total, parts);
    assert_eq!(kept.nodes.len(), graph::KEPT_NODES);
    assert!(kept
        .nodes
        .iter()
        .all(|n| n.state == graph::NodeState::Succeeded));
    let listen = format!("127.0.0.1:{}", free_port());
    env.spawn("chorus", &["dashboard", "--listen", &listen]);
    let url = format!("http://{listen}/tasks/dash-large");
    let page = until("the large task's page", || async {
        let response = reqwest::get(&url).await.ok()?;
        response.status().is_success().then_some(())?;
        response.text().await.ok()
    })
    .await;
    assert!(
        page.contains(&format!(
            "Graph of the first {MAX_DRAWN} subtasks of {parts}."
        )),
        "{page}"
    );
    assert_eq!(
        page.matches("class=\"node st-succeeded\"").count(),
        MAX_DRAWN
    );
}
