//! Unit tests of the start-up checks of the settings.

use clap::Parser;

use super::Config;

fn config(args: &[&str]) -> Config {
    Config::try_parse_from(std::iter::once("chorus-orchestrator").chain(args.iter().copied()))
        .expect("flags parse")
}

#[test]
fn the_defaults_are_valid() {
    assert_eq!(config(&[]).validate(), Ok(()));
}

#[test]
fn a_url_that_does_not_parse_is_refused() {
    let refused = config(&["--amqp-url", "amqp://host:port/%2f"]).validate();
    assert!(refused.is_err_and(|message| message.starts_with("--amqp-url ")));
}

#[test]
fn file_roots_must_be_directories() {
    let roots = config(&["--file-root", "/", "--file-root", "/tmp"]);
    assert_eq!(roots.files.file_roots.len(), 2);
    assert_eq!(roots.validate(), Ok(()));
    let refused = config(&["--file-root", "/no/such/chorus/root"]).validate();
    assert!(refused.is_err_and(|message| message.starts_with("--file-root /no/such/chorus/root")));
}

#[test]
fn a_plan_is_published_in_batches_of_a_thousand_by_default() {
    // The batch the benchmark's tuned flags used: a plan chunk's worth of confirms in flight
    // (issue 20: the defaults are the fast configuration).
    assert_eq!(config(&[]).publish_batch, 1000);
}
