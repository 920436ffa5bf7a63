//! Unit tests of the start-up checks of the settings.

use clap::Parser;

use super::Config;

fn config(args: &[&str]) -> Config {
    Config::try_parse_from(std::iter::once("chorus-worker").chain(args.iter().copied()))
        .expect("flags parse")
}

#[test]
fn the_defaults_are_valid() {
    assert_eq!(config(&[]).validate(), Ok(()));
}

#[test]
fn a_url_that_does_not_parse_is_refused_without_its_password() {
    let refused = config(&["--redis-url", "redis://user:secret@host:port"])
        .validate()
        .expect_err("not a URL");
    assert!(
        refused.starts_with("--redis-url redis://user:***@"),
        "{refused}"
    );
    assert!(!refused.contains("secret"), "{refused}");
}

#[test]
fn the_base_retry_delay_may_not_exceed_the_maximum() {
    let refused = config(&[
        "--retry-base-delay-ms",
        "5000",
        "--retry-max-delay-ms",
        "10",
    ])
    .validate()
    .expect_err("base above maximum");
    assert_eq!(
        refused,
        "--retry-base-delay-ms must not exceed --retry-max-delay-ms"
    );
    let equal = config(&["--retry-base-delay-ms", "10", "--retry-max-delay-ms", "10"]);
    assert_eq!(equal.validate(), Ok(()));
}

#[test]
fn a_handlers_retry_after_lengthens_the_wait_up_to_the_largest_bucket() {
    use std::time::Duration;
    let config = config(&["--retry-max-delay-ms", "1000"]);
    let backoff = Duration::from_millis(200);
    assert_eq!(config.retry_wait(backoff, None), backoff);
    assert_eq!(
        config.retry_wait(backoff, Some(Duration::from_millis(50))),
        backoff
    );
    assert_eq!(
        config.retry_wait(backoff, Some(Duration::from_secs(3))),
        Duration::from_secs(3)
    );
    // Buckets cover at least a minute: 100 ms doubled up to 102.4 s.
    assert_eq!(
        config.retry_wait(backoff, Some(Duration::from_secs(3600))),
        Duration::from_millis(102_400)
    );
}
