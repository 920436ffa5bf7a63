//! Unit tests of the call cache's settings, keys and stored values (its Redis side runs in
//! tests/tests/llm_cache.rs).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{key, Entry, Policy, DEFAULT_TTL_S, KEY_PREFIX, MAX_TTL_S};
use crate::steps::llm::Catalog;
use crate::steps::spec::{ModelSpec, ProviderSpec, StructuredOutput};

fn model(temperature: Option<f64>, cache: Option<bool>, ttl: Option<u64>) -> ModelSpec {
    ModelSpec {
        provider: "p".to_owned(),
        model: "x".to_owned(),
        temperature,
        cache,
        cache_ttl_s: ttl,
        ..ModelSpec::default()
    }
}

#[test]
fn the_cache_is_on_by_default_only_at_an_explicit_temperature_of_zero() {
    let day = Some(Policy {
        ttl: Duration::from_secs(DEFAULT_TTL_S),
    });
    assert_eq!(Policy::from_spec(&model(Some(0.0), None, None)), Ok(day));
    // Unset means the provider's default temperature (usually 1): not replayed unasked.
    assert_eq!(Policy::from_spec(&model(None, None, None)), Ok(None));
    assert_eq!(Policy::from_spec(&model(Some(0.7), None, None)), Ok(None));
    assert_eq!(
        Policy::from_spec(&model(Some(0.7), Some(true), None)),
        Ok(day)
    );
    assert_eq!(
        Policy::from_spec(&model(Some(0.0), Some(false), None)),
        Ok(None)
    );
    let minute = Some(Policy {
        ttl: Duration::from_secs(60),
    });
    assert_eq!(
        Policy::from_spec(&model(None, Some(true), Some(60))),
        Ok(minute)
    );
    // Turned off on purpose, a ttl may stay.
    assert_eq!(
        Policy::from_spec(&model(Some(1.0), Some(false), Some(60))),
        Ok(None)
    );
}

#[test]
fn a_ttl_out_of_bounds_or_without_a_cache_is_refused() {
    for ttl in [0, MAX_TTL_S + 1] {
        let (field, message) = Policy::from_spec(&model(Some(0.0), None, Some(ttl))).unwrap_err();
        assert_eq!(field, "cache_ttl_s");
        assert!(message.contains("30 days"), "{message}");
    }
    assert!(Policy::from_spec(&model(Some(0.0), None, Some(MAX_TTL_S))).is_ok());
    let (field, message) = Policy::from_spec(&model(Some(0.5), None, Some(60))).unwrap_err();
    assert_eq!(field, "cache_ttl_s");
    assert!(message.contains("cache = true"), "{message}");
}

#[test]
fn the_catalog_names_the_models_key_of_a_bad_ttl() {
    let providers = BTreeMap::from([(
        "p".to_owned(),
        ProviderSpec {
            base_url: Some("http://127.0.0.1:9/v1".to_owned()),
            base_url_env: None,
            api_key_env: None,
            timeout_ms: None,
            structured_output: StructuredOutput::JsonSchema,
            ca_file: None,
        },
    )]);
    let models = BTreeMap::from([("m".to_owned(), model(Some(0.0), None, Some(0)))]);
    let (key, _) =
        Catalog::build(&providers, &models, Path::new("."), &Default::default()).unwrap_err();
    assert_eq!(key, "models.m.cache_ttl_s");
}

#[test]
fn keys_hash_url_model_and_body_apart_in_one_cluster_slot() {
    let base = key("http://h/v1/chat/completions", "gpt", r#"{"a":1}"#);
    assert!(base.starts_with(KEY_PREFIX), "{base}");
    let tag = &base[KEY_PREFIX.len()..];
    assert!(tag.starts_with('{') && tag.ends_with('}'), "{base}");
    assert_eq!(tag.len(), 64 + 2, "{base}");
    assert_eq!(
        base,
        key("http://h/v1/chat/completions", "gpt", r#"{"a":1}"#)
    );
    for other in [
        key("http://g/v1/chat/completions", "gpt", r#"{"a":1}"#),
        key("http://h/v1/chat/completions", "gpt-4", r#"{"a":1}"#),
        key("http://h/v1/chat/completions", "gpt", r#"{"a":2}"#),
        // The same bytes split differently between the parts.
        key("http://h/v1/chat/completions", "gp", r#"t{"a":1}"#),
    ] {
        assert_ne!(base, other);
    }
}

#[test]
fn stored_values_decode_and_anything_else_does_not() {
    let entry = Entry {
        content: "an answer".to_owned(),
        prompt_tokens: 10,
        completion_tokens: 3,
        cached_tokens: 0,
        origin: Some("t/s/1".to_owned()),
    };
    let bytes = serde_json::to_vec(&entry).unwrap();
    assert_eq!(serde_json::from_slice::<Entry>(&bytes).unwrap(), entry);
    for garbage in [&b"garbage"[..], b"{}", br#"{"content": 1}"#, b"\xff\xfe"] {
        assert!(serde_json::from_slice::<Entry>(garbage).is_err());
    }
}
