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

#[test]
fn the_default_prefetch_is_sixteen_handler_runs_per_slot_and_keeps_the_pipe_full() {
    use super::{prefetch_of, DEFAULT_CONCURRENCY, MAX_DEFAULT_PREFETCH};
    // The defaults: 256 messages for 16 handlers, so quick handlers' subtasks waiting for
    // their results' confirms do not leave the handler slots idle.
    assert_eq!(prefetch_of(DEFAULT_CONCURRENCY, None), 256);
    // A type of a few slow handlers holds a few times its slots, not hundreds of subtasks its
    // peers could run.
    assert_eq!(prefetch_of(2, None), 32);
    assert_eq!(prefetch_of(1, None), 16);
    // Bounded for memory, and never below the handlers it must feed.
    assert_eq!(prefetch_of(100, None), MAX_DEFAULT_PREFETCH);
    assert_eq!(prefetch_of(5000, None), 5000);
    // The flag wins, above or below the concurrency.
    assert_eq!(prefetch_of(16, Some(4)), 4);
    assert_eq!(prefetch_of(16, Some(600)), 600);
}

#[test]
fn the_flags_default_to_the_fast_configuration() {
    let defaults = config(&[]);
    assert_eq!(defaults.concurrency, super::DEFAULT_CONCURRENCY);
    assert_eq!(defaults.prefetch, None);
    // One runtime thread, like the other services: a pool only adds hand-offs.
    assert_eq!(defaults.threads, 1);
    let (spec, pools) = super::consumers(&defaults);
    let queue = chorus_shared::topology::subtask_queue("default");
    assert_eq!(pools[&queue].available_permits(), 16);
    let consumer = &spec.consumers[0];
    assert_eq!(
        (consumer.queue.as_str(), consumer.prefetch),
        (queue.as_str(), 256)
    );
    // Every held message may wait in the consume loop for a handler slot.
    assert_eq!(consumer.concurrency, 256);
    // A type's own concurrency sets its prefetch the same way; --prefetch overrides it.
    let (spec, _) = super::consumers(&config(&["--types", "default,gpu:2"]));
    let prefetches: Vec<u16> = spec.consumers.iter().map(|c| c.prefetch).collect();
    assert_eq!(prefetches, [256, 32]);
    let (spec, _) = super::consumers(&config(&["--prefetch", "16"]));
    assert_eq!(spec.consumers[0].prefetch, 16);
}
