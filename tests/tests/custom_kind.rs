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
