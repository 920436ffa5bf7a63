//! Unit tests of strict decoding: every public decoder refuses arrays for objects, unknown fields
//! and wrong types, in JSON and MessagePack, naming the field.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::kinds::{range_sum::RangeSumInput, report::ReportInput, wordfreq::WordFreqInput};
use crate::protocol::{Control, Encoding, OnFailure, RawInput, TaskRequest};

/// `body` in both encodings.
fn both(body: &serde_json::Value) -> [(Encoding, Vec<u8>); 2] {
    [
        (Encoding::Json, serde_json::to_vec(body).unwrap()),
        (Encoding::Msgpack, rmp_serde::to_vec_named(body).unwrap()),
    ]
}

/// The error of decoding `body` as `T` in each encoding; all must be the same.
fn refusal<T: DeserializeOwned + fmt::Debug>(body: serde_json::Value) -> String {
    let [(_, json), (_, msgpack)] = both(&body);
    let from_json = Encoding::Json.decode::<T>(&json).unwrap_err().to_string();
    let from_msgpack = Encoding::Msgpack
        .decode::<T>(&msgpack)
        .unwrap_err()
        .to_string();
    assert_eq!(from_json, from_msgpack, "{body}");
    from_json
}

/// The error of decoding `input` as a kind's input `T`, as the kinds' codec does.
fn input_refusal<T: DeserializeOwned + fmt::Debug>(input: serde_json::Value) -> String {
    let bytes = rmp_serde::to_vec_named(&input).unwrap();
    let error = from_msgpack::<T>(&bytes).unwrap_err();
    error.under("input")
}

#[test]
fn valid_requests_decode_in_both_encodings() {
    let body = json!({"kind": "range-sum", "input": [0, 9, 3], "id": "t-1",
        "options": {"max_attempts": 2, "on_failure": "continue"},
        "parent": {"task": "p", "subtask": "s", "round": 1}});
    for (encoding, bytes) in both(&body) {
        let request: TaskRequest = encoding.decode(&bytes).unwrap();
        let options = request.options.unwrap();
        assert_eq!(options.max_attempts, Some(2), "{encoding:?}");
        assert_eq!(options.on_failure, Some(OnFailure::Continue));
        // The input is any value: the kind decides what it accepts.
        assert!(request.input.is_array());
        assert_eq!(request.parent.unwrap().round, 1);
    }
}

#[test]
fn a_request_refuses_arrays_for_objects() {
    assert_eq!(
        refusal::<TaskRequest>(json!(["range-sum", {"start": 0}])),
        "cannot decode body: expected a map, got an array"
    );
    assert_eq!(
        refusal::<TaskRequest>(json!({"kind": "k", "input": 1, "options": [1]})),
        "cannot decode body: options: expected a map, got an array"
    );
    assert_eq!(
        refusal::<TaskRequest>(json!({"kind": "k", "input": 1, "parent": ["p", "s"]})),
        "cannot decode body: parent: expected a map, got an array"
    );
    assert_eq!(
        refusal::<TaskRequest>(
            json!({"kind": "k", "input": 1, "options": {"on_failure": ["continue"]}})
        ),
        "cannot decode body: options.on_failure: expected a variant name or a map of one variant, got an array"
    );
}

#[test]
fn a_request_refuses_unknown_fields() {
    let top = refusal::<TaskRequest>(json!({"kind": "k", "input": 1, "colour": "red"}));
    assert!(top.contains("unknown field `colour`"), "{top}");
    let options =
        refusal::<TaskRequest>(json!({"kind": "k", "input": 1, "options": {"max_attemps": 2}}));
    assert!(
        options.starts_with("cannot decode body: options")
            && options.contains("unknown field `max_attemps`"),
        "{options}"
    );
    // ParentRef does not deny unknown fields itself (Redis keeps it too); the strict decoder does.
    assert_eq!(
        refusal::<TaskRequest>(
            json!({"kind": "k", "input": 1, "parent": {"task": "p", "subtask": "s", "x": 1}})
        ),
        "cannot decode body: parent.x: unknown field"
    );
}

#[test]
fn a_request_names_the_field_of_a_wrong_type() {
    assert_eq!(
        refusal::<TaskRequest>(json!({"kind": "k", "input": 1, "options": {"max_attempts": "x"}})),
        "cannot decode body: options.max_attempts: invalid type: string \"x\", expected u32"
    );
    assert_eq!(
        refusal::<TaskRequest>(json!({"kind": 5, "input": 1})),
        "cannot decode body: kind: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        refusal::<TaskRequest>(
            json!({"kind": "k", "input": 1, "id": null, "options": {"timeout_ms": -1}})
        ),
        "cannot decode body: options.timeout_ms: invalid value: integer `-1`, expected u64"
    );
    let missing = refusal::<TaskRequest>(json!({"kind": "k"}));
    assert!(missing.contains("missing field `input`"), "{missing}");
}

#[test]
fn field_names_must_be_strings() {
    // {0: "k", 1: 1}: serde would take field indices for the fields `kind` and `input`.
    let body = rmpv::Value::Map(vec![
        (rmpv::Value::from(0), rmpv::Value::from("k")),
        (rmpv::Value::from(1), rmpv::Value::from(1)),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &body).unwrap();
    let error = Encoding::Msgpack
        .decode::<TaskRequest>(&bytes)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("expected a string as map key, got an integer"),
        "{error}"
    );
}

#[test]
fn control_messages_decode_only_from_maps() {
    let body = json!({"op": "cancel", "task": "t-1", "reason": "enough"});
    for (encoding, bytes) in both(&body) {
        let control: Control = encoding.decode(&bytes).unwrap();
        assert!(matches!(control, Control::Cancel { .. }), "{encoding:?}");
    }
    // An internally tagged enum would take its tag from an array's first element.
    assert_eq!(
        refusal::<Control>(json!(["cancel", "t-1"])),
        "cannot decode body: expected a map, got an array"
    );
    let unknown = refusal::<Control>(json!({"op": "cancel", "task": "t", "force": true}));
    assert!(unknown.contains("unknown field `force`"), "{unknown}");
    let wrong = refusal::<Control>(json!({"op": "cancel", "task": ["t"]}));
    assert!(wrong.contains("invalid type: sequence"), "{wrong}");
}

#[test]
fn range_sum_input_decodes_only_from_a_map() {
    assert_eq!(
        input_refusal::<RangeSumInput>(json!([0, 9, 3])),
        "input: expected a map, got an array"
    );
    assert_eq!(
        input_refusal::<RangeSumInput>(json!({"start": 0, "end": 9, "parts": "x"})),
        "input.parts: invalid type: string \"x\", expected u32"
    );
    let unknown = input_refusal::<RangeSumInput>(json!({"start": 0, "end": 9, "parts": 3, "p": 1}));
    assert!(unknown.contains("unknown field `p`"), "{unknown}");
    // Pairs stay arrays: `after` is a list of [slice, dependency].
    let bytes =
        rmp_serde::to_vec_named(&json!({"start": 0, "end": 9, "parts": 3, "after": [[1, 0]]}))
            .unwrap();
    let input: RangeSumInput = from_msgpack(&bytes).unwrap();
    assert_eq!(input.after, vec![[1, 0]]);
}

#[test]
fn wordfreq_and_report_inputs_decode_only_from_maps() {
    assert_eq!(
        input_refusal::<WordFreqInput>(json!([["README.md"], 5])),
        "input: expected a map, got an array"
    );
    assert_eq!(
        input_refusal::<WordFreqInput>(json!({"paths": "README.md"})),
        "input.paths: invalid type: string \"README.md\", expected a sequence"
    );
    assert_eq!(
        input_refusal::<WordFreqInput>(json!({"paths": ["a", 7]})),
        "input.paths[1]: invalid type: integer `7`, expected a string"
    );
    assert_eq!(
        input_refusal::<ReportInput>(json!(["topic"])),
        "input: expected a map, got an array"
    );
    let unknown = input_refusal::<ReportInput>(json!({"topic": "t", "tone": "dry"}));
    assert!(unknown.contains("unknown field `tone`"), "{unknown}");
}

#[test]
fn a_depth_bomb_is_a_clean_error_in_both_encodings() {
    let depth = 100_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let error = from_json::<rmpv::Value>(json.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("recursion limit exceeded"), "{error}");
    // 0x91: an array of one element, 100k times.
    let mut msgpack = vec![0x91; depth];
    msgpack.push(0xc0);
    let error = from_msgpack::<rmpv::Value>(&msgpack)
        .unwrap_err()
        .to_string();
    assert!(error.contains("nested deeper than 127 levels"), "{error}");
}

#[test]
fn both_encodings_nest_to_the_same_depth() {
    for (depth, fits) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false)] {
        let json = format!("{}\"s\"{}", "[".repeat(depth), "]".repeat(depth));
        let from_json = from_json::<rmpv::Value>(json.as_bytes());
        assert_eq!(from_json.is_ok(), fits, "JSON, {depth}");
        // 0x91: an array of one element; 0xa1 0x73: the string "s".
        let mut msgpack = vec![0x91; depth];
        msgpack.extend([0xa1, 0x73]);
        let from_msgpack = from_msgpack::<rmpv::Value>(&msgpack);
        assert_eq!(from_msgpack.is_ok(), fits, "MessagePack, {depth}");
    }
}

#[test]
fn bytes_after_a_msgpack_value_are_refused() {
    let mut bytes = rmp_serde::to_vec_named(&json!({"kind": "k", "input": 1})).unwrap();
    bytes.push(0xc0);
    let error = Encoding::Msgpack
        .decode::<TaskRequest>(&bytes)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("1 bytes follow the MessagePack value"),
        "{error}"
    );
}

#[test]
fn any_value_input_keeps_binary_and_extensions() {
    let input = rmpv::Value::Array(vec![
        rmpv::Value::Binary(vec![1, 2]),
        rmpv::Value::Ext(5, vec![9]),
        rmpv::Value::from(-3),
        rmpv::Value::F64(1.5),
    ]);
    let body = rmpv::Value::Map(vec![
        (rmpv::Value::from("kind"), rmpv::Value::from("k")),
        (rmpv::Value::from("input"), input.clone()),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &body).unwrap();
    let request: TaskRequest = Encoding::Msgpack.decode(&bytes).unwrap();
    assert_eq!(request.input, input);
}

#[test]
fn lengths_a_body_claims_are_not_allocated_up_front() {
    // An array32 and a str32 header each claiming 2^32 - 1 elements, with nothing after them:
    // allocating what they claim would take tens of GiB.
    for header in [
        [0xdd, 0xff, 0xff, 0xff, 0xff],
        [0xdb, 0xff, 0xff, 0xff, 0xff],
    ] {
        let error = from_msgpack::<rmpv::Value>(&header)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not MessagePack"), "{error}");
    }
}

#[test]
fn a_raw_input_is_the_msgpack_of_the_input_in_either_encoding() {
    let input = json!({"start": 0, "end": -9, "parts": 3.5, "after": [[1, 0]], "s": "é",
        "none": null, "yes": true, "nested": {"a": [[], {}]}});
    let body = json!({"kind": "range-sum", "input": input});
    let expected = rmp_serde::to_vec_named(&input).unwrap();
    for (encoding, bytes) in both(&body) {
        let request: TaskRequest<RawInput> = encoding.decode(&bytes).unwrap();
        let again: serde_json::Value = rmp_serde::from_slice(request.input.as_bytes()).unwrap();
        assert_eq!(again, input, "{encoding:?}");
        if encoding == Encoding::Msgpack {
            assert_eq!(request.input.as_bytes(), expected.as_slice());
        }
    }
    // Binary data and extensions, which only MessagePack has, come through unchanged.
    let value = rmpv::Value::Array(vec![
        rmpv::Value::Binary(vec![1, 2]),
        rmpv::Value::Ext(5, vec![9, 8]),
    ]);
    let body = rmpv::Value::Map(vec![
        (rmpv::Value::from("kind"), rmpv::Value::from("k")),
        (rmpv::Value::from("input"), value.clone()),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &body).unwrap();
    let request: TaskRequest<RawInput> = Encoding::Msgpack.decode(&bytes).unwrap();
    let again = rmpv::decode::read_value(&mut request.input.as_bytes()).unwrap();
    assert_eq!(again, value);
}

#[test]
fn a_raw_input_is_bounded_as_any_body() {
    let deep = format!(
        r#"{{"kind": "k", "input": {}1{}}}"#,
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    let error = Encoding::Json
        .decode::<TaskRequest<RawInput>>(deep.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("recursion limit exceeded"), "{error}");
    let body = json!({"kind": "k", "input": {"a": [1, {"b": 2}]}, "colour": 1});
    let [(_, json), (_, msgpack)] = both(&body);
    for error in [
        Encoding::Json.decode::<TaskRequest<RawInput>>(&json),
        Encoding::Msgpack.decode::<TaskRequest<RawInput>>(&msgpack),
    ] {
        let error = error.unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
    }
}

#[test]
fn a_body_holds_at_most_max_values_elements() {
    for (count, fits) in [(MAX_VALUES - 2, true), (MAX_VALUES - 1, false)] {
        // The root map's two entries count too.
        let mut body = Vec::new();
        rmp::encode::write_map_len(&mut body, 2).unwrap();
        rmp::encode::write_str(&mut body, "kind").unwrap();
        rmp::encode::write_str(&mut body, "k").unwrap();
        rmp::encode::write_str(&mut body, "input").unwrap();
        rmp::encode::write_array_len(&mut body, u32::try_from(count).unwrap()).unwrap();
        body.resize(body.len() + count, 0xc0);
        let decoded = Encoding::Msgpack.decode::<TaskRequest<RawInput>>(&body);
        match decoded {
            Ok(_) => assert!(fits, "{count}"),
            Err(error) => {
                assert!(!fits, "{count}: {error}");
                let error = error.to_string();
                assert!(
                    error.contains("input: more than 1048576 array elements and map entries"),
                    "{error}"
                );
            }
        }
    }
}

#[test]
fn a_deadline_control_message_takes_only_its_task() {
    let deadline = refusal::<Control>(json!({"op": "deadline", "task": "t", "reason": "x"}));
    assert!(
        deadline.contains("unknown field `reason`: op `deadline` takes only `task`"),
        "{deadline}"
    );
    let unknown = refusal::<Control>(json!({"op": "explode", "task": "t"}));
    assert!(
        unknown.contains("op: unknown variant `explode`"),
        "{unknown}"
    );
    let missing = refusal::<Control>(json!({"op": "cancel"}));
    assert!(missing.contains("missing field `task`"), "{missing}");
}

/// The known gap of docs/security.md: what serde buffers (flatten, untagged, internally tagged)
/// is read by serde's own deserializer. Pinned here so that a change of it is seen.
#[test]
fn what_serde_buffers_is_not_strict() {
    #[derive(serde::Deserialize, Debug)]
    struct Point {
        x: u32,
        y: u32,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(untagged)]
    enum Shape {
        Point(Point),
    }
    #[derive(serde::Deserialize, Debug)]
    struct Flat {
        #[serde(flatten)]
        point: Point,
    }
    let array = rmp_serde::to_vec_named(&json!([1, 2])).unwrap();
    // Strict where serde does not buffer...
    assert!(from_msgpack::<Point>(&array).is_err());
    // ...not inside an untagged enum, nor a flattened struct's unknown fields.
    let Shape::Point(point) = from_msgpack::<Shape>(&array).unwrap();
    assert_eq!((point.x, point.y), (1, 2));
    let flat = rmp_serde::to_vec_named(&json!({"x": 1, "y": 2, "z": 3})).unwrap();
    assert_eq!(from_msgpack::<Flat>(&flat).unwrap().point.x, 1);
}

/// What strict decoding costs against `rmp_serde` directly, for the report in docs; prints, asserts
/// nothing about time. Run with
/// `cargo test --release -p chorus-shared --lib decode_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn decode_cost() {
    use crate::protocol::{decode, SubtaskMessage};
    use std::time::Instant;

    fn per_second(mut run: impl FnMut()) -> f64 {
        let rounds = 200_000;
        let started = Instant::now();
        for _ in 0..rounds {
            run();
        }
        f64::from(rounds) / started.elapsed().as_secs_f64()
    }
    let request = rmp_serde::to_vec_named(&json!({"kind": "range-sum", "id": "t-1",
        "input": {"start": 0, "end": 1000, "parts": 10}, "options": {"max_attempts": 2}}))
    .unwrap();
    let subtask = rmp_serde::to_vec_named(&SubtaskMessage {
        task: "task-1".into(),
        subtask: "17".into(),
        kind: "range-sum".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 300_000,
        payload: serde_bytes::ByteBuf::from(vec![0x93, 1, 2, 3]),
        worker_type: "default".into(),
        depends_on: vec![],
        depth: 0,
        deadline_at_ms: None,
        events: false,
        round: 1,
        usage: Vec::new(),
        max_tokens: None,
        fingerprint: None,
    })
    .unwrap();
    let figures = [
        (
            "request, rmp_serde",
            per_second(|| drop(decode::<TaskRequest>(&request).unwrap())),
        ),
        (
            "request, strict",
            per_second(|| drop(Encoding::Msgpack.decode::<TaskRequest>(&request).unwrap())),
        ),
        (
            "subtask, rmp_serde",
            per_second(|| drop(decode::<SubtaskMessage>(&subtask).unwrap())),
        ),
        (
            "subtask, strict",
            per_second(|| drop(from_msgpack::<SubtaskMessage>(&subtask).unwrap())),
        ),
    ];
    for (what, rate) in figures {
        println!("{what}: {rate:.0} decodes/s");
    }
}

#[test]
fn a_settle_nudge_decodes_as_chorus_writes_it_and_takes_no_reason() {
    let nudge = Control::Settle {
        task: "t".into(),
        hops: 3,
    };
    let body = crate::protocol::encode(&nudge).unwrap();
    assert_eq!(Encoding::Msgpack.decode::<Control>(&body).unwrap(), nudge);
    let reason = refusal::<Control>(json!({"op": "settle", "task": "t", "reason": "x"}));
    assert!(reason.contains("unknown field `reason`"), "{reason}");
    let hops = refusal::<Control>(json!({"op": "cancel", "task": "t", "hops": 1}));
    assert!(hops.contains("unknown field `hops`"), "{hops}");
}
