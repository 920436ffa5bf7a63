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
fn a_url_that_does_not_parse_is_refused_without_its_password() {
    let refused = config(&["--amqp-url", "amqp://guest:secret@host:port/%2f"])
        .validate()
        .expect_err("not a URL");
    assert!(
        refused.starts_with("--amqp-url amqp://guest:***@"),
        "{refused}"
    );
    assert!(!refused.contains("secret"), "{refused}");
    assert!(!refused.contains('\n'), "{refused}");
}
