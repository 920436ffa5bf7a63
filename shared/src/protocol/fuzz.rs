//! Property tests of the public decoders (task requests and control messages in both encodings,
//! the built-in kinds' inputs): random bytes, random values and mutated valid bodies never panic
//! and always give a value or a clean error.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{strict, Control, Encoding, RawInput, TaskRequest};
use crate::kinds::{range_sum::RangeSumInput, report::ReportInput, wordfreq::WordFreqInput};

/// Largest body the strategies make: enough for every shape, small enough to stay quick.
const MAX_BODY: usize = 2048;

/// Valid bodies of every public decoder, the seeds of the mutations.
fn seeds() -> Vec<serde_json::Value> {
    vec![
        json!({"kind": "range-sum", "input": {"start": 0, "end": 9, "parts": 3}, "id": "t-1",
            "options": {"max_attempts": 2, "timeout_ms": 1000, "on_failure": "continue",
                "max_concurrency": 4, "deadline_ms": 60000, "max_rounds": 2,
                "subtask_events": true, "batch_size": 10},
            "parent": {"task": "p", "subtask": "s", "round": 1}}),
        json!({"op": "cancel", "task": "t-1", "reason": "enough"}),
        json!({"op": "deadline", "task": "t-1"}),
        json!({"start": 0, "end": 90, "parts": 3, "delay_ms": 1, "poison": [1], "types": ["a"],
            "chain": true, "after": [[1, 0]]}),
        json!({"paths": ["README.md", "docs"], "top": 5}),
        json!({"topic": "t", "sections": ["a", "b"], "weak": ["b"]}),
    ]
}

/// Runs every public decoder over `body` in `encoding`: none may panic; what they return is
/// either a value or an error with a message.
fn decode_all(encoding: Encoding, body: &[u8]) {
    check(
        encoding
            .decode::<TaskRequest>(body)
            .map_err(|e| e.to_string()),
    );
    check(encoding.decode::<Control>(body).map_err(|e| e.to_string()));
    check(
        encoding
            .decode::<TaskRequest<RawInput>>(body)
            .map_err(|e| e.to_string()),
    );
    input::<RangeSumInput>(encoding, body);
    input::<WordFreqInput>(encoding, body);
    input::<ReportInput>(encoding, body);
}

/// Decodes a kind's input as the kinds' codec does (which reads MessagePack only; JSON here
/// exercises the same rules through the other format).
fn input<T: DeserializeOwned>(encoding: Encoding, body: &[u8]) {
    let decoded = match encoding {
        Encoding::Json => strict::from_json::<T>(body),
        Encoding::Msgpack => strict::from_msgpack::<T>(body),
    };
    check(decoded.map_err(|e| e.under("input")));
}

fn check<T>(result: Result<T, String>) {
    if let Err(message) = result {
        assert!(!message.is_empty(), "an error without a message");
    }
}

/// A MessagePack or JSON body of a random value: keys from the public messages' field names, so
/// that decoding gets past the first field.
fn random_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("kind"),
        Just("input"),
        Just("id"),
        Just("options"),
        Just("parent"),
        Just("max_attempts"),
        Just("on_failure"),
        Just("op"),
        Just("task"),
        Just("reason"),
        Just("start"),
        Just("end"),
        Just("parts"),
        Just("after"),
        Just("paths"),
        Just("topic"),
        Just("zzz"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("cancel".to_owned()),
            Just("continue".to_owned()),
            Just("range-sum".to_owned()),
            ".{0,12}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// One change to a body: flip a byte, insert one, remove one, or cut the rest.
#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = body.len().max(1);
        match *mutation {
            Mutation::Set(at, byte) if !body.is_empty() => body[at % len] = byte,
            Mutation::Insert(at, byte) => body.insert(at % (body.len() + 1), byte),
            Mutation::Remove(at) if !body.is_empty() => {
                body.remove(at % len);
            }
            Mutation::Truncate(at) => body.truncate(at % len),
            _ => {}
        }
    }
    body
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..MAX_BODY)) {
        decode_all(Encoding::Msgpack, &body);
        decode_all(Encoding::Json, &body);
    }

    #[test]
    fn random_values_never_panic(value in random_value()) {
        decode_all(Encoding::Json, &serde_json::to_vec(&value).unwrap());
        decode_all(Encoding::Msgpack, &rmp_serde::to_vec_named(&value).unwrap());
    }

    #[test]
    fn mutated_valid_bodies_never_panic(
        seed in 0..6usize,
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let value = &seeds()[seed];
        let json = serde_json::to_vec(value).unwrap();
        decode_all(Encoding::Json, &mutate(json, &mutations));
        let msgpack = rmp_serde::to_vec_named(value).unwrap();
        decode_all(Encoding::Msgpack, &mutate(msgpack, &mutations));
    }

    /// A valid body whose objects are turned into arrays of their values (what serde would
    /// accept positionally) is refused, whichever object it was.
    #[test]
    fn objects_as_arrays_are_refused(seed in 0..6usize, pick in any::<usize>()) {
        let mut value = seeds()[seed].clone();
        let objects = count_objects(&value);
        positional(&mut value, &mut (pick % objects));
        for (encoding, body) in [
            (Encoding::Json, serde_json::to_vec(&value).unwrap()),
            (Encoding::Msgpack, rmp_serde::to_vec_named(&value).unwrap()),
        ] {
            let refused = match seed {
                0 => encoding.decode::<TaskRequest>(&body).is_err(),
                1 | 2 => encoding.decode::<Control>(&body).is_err(),
                _ => {
                    let bytes = rmp_serde::to_vec_named(&value).unwrap();
                    match seed {
                        3 => strict::from_msgpack::<RangeSumInput>(&bytes).is_err(),
                        4 => strict::from_msgpack::<WordFreqInput>(&bytes).is_err(),
                        _ => strict::from_msgpack::<ReportInput>(&bytes).is_err(),
                    }
                }
            };
            // Seed 0's `input` is any value to the request: turning it into an array is the
            // kind's business, checked by the kinds' seeds.
            prop_assert!(refused || (seed == 0 && value["input"].is_array()), "{value}");
        }
    }
}

fn count_objects(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(map) => 1 + map.values().map(count_objects).sum::<usize>(),
        serde_json::Value::Array(items) => items.iter().map(count_objects).sum(),
        _ => 0,
    }
}

/// Replaces the `*nth` object (depth first) of `value` with the array of its values.
fn positional(value: &mut serde_json::Value, nth: &mut usize) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            if *nth == 0 {
                let values = map.values().cloned().collect();
                *value = serde_json::Value::Array(values);
                return true;
            }
            *nth -= 1;
            map.values_mut().any(|child| positional(child, nth))
        }
        serde_json::Value::Array(items) => items.iter_mut().any(|child| positional(child, nth)),
        _ => false,
    }
}
