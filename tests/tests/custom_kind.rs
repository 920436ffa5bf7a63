//! A user's own binary (examples/custom-kind) runs a kind Chorus does not ship, through the same
//! `run` functions as the stock services.
#![allow(clippy::unwrap_used)]

use chorus_tests::TestEnv;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_binary_serves_its_own_kind_end_to_end() {
    let mut env = TestEnv::new("customkind").await;
    env.spawn("chorus-custom", &["orchestrator"]);
    env.spawn("chorus-custom", &["worker"]);
    env.spawn("chorus-custom", &["synthesizer"]);
    let (code, stdout) = env
        .cli(&[
            "submit",
            "--kind",
            "primes",
            "--input",
            r#"{"limit": 100000, "parts": 8}"#,
            "--wait",
        ])
        .await;
    assert_eq!(code, 0, "{stdout}");
    let outcome: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["output"]["primes"], 9592);
    assert_eq!(outcome["stats"]["subtasks"], 8);
    // The built-in kinds are still there.
    let (code, stdout) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--input",
            r#"{"start": 0, "end": 10, "parts": 2}"#,
            "--wait",
        ])
        .await;
    assert_eq!(code, 0, "{stdout}");
}

/// What `bin` with `args` says on its way out, once it has exited 64 with one line
/// `<bin>: <message>` on stderr.
async fn refusal(env: &TestEnv, bin: &str, args: &[&str]) -> String {
    let output = env.run_to_exit(bin, args).await;
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(64), "{bin} {args:?}: {stderr}");
    let message = stderr
        .strip_prefix(&format!("{bin}: "))
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{bin} {args:?} said {stderr:?}"));
    assert!(!message.contains('\n'), "{bin} {args:?} said {stderr:?}");
    message.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_binary_refuses_bad_flags_like_the_stock_ones() {
    let env = TestEnv::new("custombadflags").await;
    let retry: &[&str] = &[
        "--retry-base-delay-ms",
        "5000",
        "--retry-max-delay-ms",
        "10",
    ];
    let url: &[&str] = &["--amqp-url", "amqp://guest:secret@127.0.0.1:port/%2f"];
    for (service, flags) in [
        ("worker", retry),
        ("worker", url),
        ("orchestrator", url),
        ("synthesizer", url),
    ] {
        let stock = refusal(&env, &format!("chorus-{service}"), flags).await;
        let custom_args: Vec<&str> = std::iter::once(service)
            .chain(flags.iter().copied())
            .collect();
        let custom = refusal(&env, "chorus-custom", &custom_args).await;
        assert_eq!(custom, stock, "{service} {flags:?}");
        assert!(!stock.contains("secret"), "{stock}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_binary_runs_on_as_many_threads_as_asked() {
    let mut env = TestEnv::new("customthreads").await;
    let one = env.spawn("chorus-custom", &["orchestrator", "--threads", "1"]);
    let many = env.spawn("chorus-custom", &["orchestrator", "--threads", "16"]);
    env.client()
        .await
        .wait_for_consumers("chorus.tasks", 2)
        .await;
    // Sixteen runtime threads against one; the rest (blocking pool, libraries) is alike.
    let (one, many) = (env.threads(one), env.threads(many));
    assert!(
        many >= one + 10,
        "--threads 1: {one} threads, --threads 16: {many}"
    );
}
