//! Unit tests of the limits' checks, keys and estimate.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn spec() -> ModelSpec {
    ModelSpec {
        provider: "p".to_owned(),
        model: "m".to_owned(),
        ..Default::default()
    }
}

#[test]
fn a_model_without_limits_passes() {
    assert_eq!(check("writer", &spec()), Ok(()));
}

#[test]
fn limits_in_range_pass() {
    let spec = ModelSpec {
        requests_per_minute: Some(60),
        burst: Some(5),
        tokens_per_minute: Some(100_000),
        max_in_flight: Some(4),
        ..spec()
    };
    assert_eq!(check("writer", &spec), Ok(()));
}

#[test]
fn zero_or_huge_limits_name_their_key() {
    let zero = ModelSpec {
        max_in_flight: Some(0),
        ..spec()
    };
    assert_eq!(check("w", &zero).unwrap_err().0, "max_in_flight");
    let huge = ModelSpec {
        tokens_per_minute: Some(MAX_TOKENS_PER_MINUTE + 1),
        ..spec()
    };
    assert_eq!(check("w", &huge).unwrap_err().0, "tokens_per_minute");
    let rpm = ModelSpec {
        requests_per_minute: Some(0),
        ..spec()
    };
    assert_eq!(check("w", &rpm).unwrap_err().0, "requests_per_minute");
}

#[test]
fn a_burst_needs_a_request_rate() {
    let spec = ModelSpec {
        burst: Some(3),
        ..spec()
    };
    assert_eq!(check("w", &spec).unwrap_err().0, "burst");
}

#[test]
fn a_limited_model_name_cannot_break_its_hash_tag() {
    let spec = ModelSpec {
        requests_per_minute: Some(1),
        ..spec()
    };
    assert!(check("a}b", &spec).is_err());
    assert!(check("a{b", &spec).is_err());
    // Without limits the name names no key.
    assert_eq!(check("a}b", &self::spec()), Ok(()));
}

#[test]
fn the_admin_may_set_zero_but_not_above_the_maximum() {
    assert_eq!(Field::MaxInFlight.check(0, true), Ok(()));
    assert!(Field::MaxInFlight.check(0, false).is_err());
    assert!(Field::RequestsPerMinute
        .check(MAX_REQUESTS_PER_MINUTE + 1, true)
        .is_err());
}

#[test]
fn keys_share_one_hash_tag() {
    for key in keys("writer") {
        assert!(key.starts_with("chorus:llm:{writer}:"), "{key}");
    }
}

#[test]
fn the_estimate_is_characters_over_four_plus_the_completion() {
    let messages = [
        json!({"role": "system", "content": "x".repeat(40)}),
        json!({"role": "user", "content": "é".repeat(8)}),
    ];
    assert_eq!(estimate(&messages, Some(100)), 12 + 100);
    assert_eq!(estimate(&messages, None), 12 + DEFAULT_COMPLETION_ESTIMATE);
}

#[test]
fn a_kinds_files_bad_limit_names_its_models_key() {
    use std::collections::BTreeMap;

    use crate::steps::spec::{ProviderSpec, StructuredOutput};

    let providers = BTreeMap::from([(
        "p".to_owned(),
        ProviderSpec {
            base_url: Some("http://127.0.0.1:9/v1".to_owned()),
            base_url_env: None,
            api_key_env: None,
            timeout_ms: None,
            structured_output: StructuredOutput::JsonObject,
            ca_file: None,
        },
    )]);
    let models = BTreeMap::from([(
        "writer".to_owned(),
        ModelSpec {
            tokens_per_minute: Some(0),
            ..spec()
        },
    )]);
    let slot = Default::default();
    let error =
        crate::steps::llm::Catalog::build(&providers, &models, std::path::Path::new("."), &slot)
            .unwrap_err();
    assert_eq!(error.0, "models.writer.tokens_per_minute", "{error:?}");
}
