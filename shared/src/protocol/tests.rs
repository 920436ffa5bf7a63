//! Unit tests of the wire protocol: encodings both ways, options, validation.

use super::*;

fn sample_request() -> TaskRequest {
    TaskRequest {
        kind: "range-sum".into(),
        input: Value::Map(vec![
            (Value::from("start"), Value::from(0)),
            (Value::from("end"), Value::from(100)),
            (Value::from("parts"), Value::from(4)),
        ]),
        id: Some("t-1".into()),
        options: Some(TaskOptions {
            max_attempts: Some(2),
            timeout_ms: Some(1000),
            on_failure: Some(OnFailure::Continue),
            max_concurrency: Some(4),
            deadline_ms: Some(60_000),
            max_rounds: Some(2),
            batch_size: Some(10),
            subtask_events: Some(true),
            max_tokens: None,
        }),
        parent: None,
    }
}

#[test]
fn task_request_round_trips_in_both_encodings() {
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let bytes = encoding.encode(&sample_request()).expect("encode");
        let back: TaskRequest = encoding.decode(&bytes).expect("decode");
        assert_eq!(back, sample_request(), "{encoding:?}");
    }
}

#[test]
fn outcome_round_trips_in_both_encodings() {
    let outcome = Outcome {
        id: "t".into(),
        status: Status::Partial,
        output: Value::from(42),
        errors: vec![OutcomeError {
            subtask: Some("3".into()),
            message: "boom".into(),
        }],
        stats: Stats {
            subtasks: 4,
            succeeded: 3,
            failed: 1,
            retries: 2,
            duration_ms: 17,
            skipped: 0,
            rounds: 1,
            tokens: std::collections::BTreeMap::new(),
            cost: None,
        },
    };
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let bytes = encoding.encode(&outcome).expect("encode");
        let back: Outcome = encoding.decode(&bytes).expect("decode");
        assert_eq!(back, outcome, "{encoding:?}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&Encoding::Json.encode(&outcome).expect("encode")).expect("json");
    assert_eq!(json["status"], "partial");
    assert_eq!(json["errors"][0]["subtask"], "3");
    assert_eq!(json["stats"]["retries"], 2);
}

#[test]
fn messages_from_before_rounds_were_carried_decode_as_round_zero() {
    let subtask = rmp_serde::to_vec_named(&serde_json::json!({
        "task": "t", "subtask": "0", "kind": "k", "attempt": 1, "max_attempts": 3,
        "timeout_ms": 10, "payload": [],
    }))
    .expect("encode");
    assert_eq!(decode::<SubtaskMessage>(&subtask).expect("decode").round, 0);
    let result = rmp_serde::to_vec_named(&serde_json::json!({
        "task": "t", "subtask": "0", "attempts": 1, "outcome": {"failed": "x"},
    }))
    .expect("encode");
    assert_eq!(decode::<ResultMessage>(&result).expect("decode").round, 0);
}

#[test]
fn internal_messages_round_trip() {
    let subtask = SubtaskMessage {
        task: "t".into(),
        subtask: "0".into(),
        kind: "k".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 10,
        payload: ByteBuf::from(vec![1, 2, 3]),
        worker_type: "gpu".into(),
        depends_on: vec!["a".into()],
        depth: 1,
        deadline_at_ms: Some(5),
        events: true,
        round: 2,
        usage: Vec::new(),
        max_tokens: None,
        fingerprint: Some("rust:k:1".into()),
    };
    assert_eq!(
        decode::<SubtaskMessage>(&encode(&subtask).expect("encode")).expect("decode"),
        subtask
    );
    for outcome in [
        SubtaskOutcome::Succeeded(ByteBuf::from(vec![9])),
        SubtaskOutcome::Failed("x".into()),
    ] {
        let result = ResultMessage {
            task: "t".into(),
            subtask: "1".into(),
            attempts: 2,
            outcome,
            spawned: vec![PlanEntry {
                id: "1.0".into(),
                worker_type: DEFAULT_WORKER_TYPE.into(),
                depends_on: vec![],
                depth: 1,
                payload: ByteBuf::from(vec![7]),
                child: None,
            }],
            round: 3,
            usage: Vec::new(),
        };
        assert_eq!(
            decode::<ResultMessage>(&encode(&result).expect("encode")).expect("decode"),
            result
        );
    }
}

#[test]
fn control_messages_decode_from_json() {
    let cancel: Control = Encoding::Json
        .decode(br#"{"op": "cancel", "task": "t-1"}"#)
        .expect("cancel");
    assert_eq!(
        cancel,
        Control::Cancel {
            task: "t-1".into(),
            reason: None
        }
    );
    assert!(Encoding::Json
        .decode::<Control>(br#"{"op": "explode", "task": "t"}"#)
        .is_err());
}

#[test]
fn stored_skips_written_by_lua_decode() {
    // What the graph scripts store for a skipped subtask (cmsgpack packs a Lua table).
    let bytes = rmp_serde::to_vec_named(&serde_json::json!({
        "attempts": 0,
        "outcome": {"skipped": "dependency 3 did not succeed"}
    }))
    .expect("encode");
    #[derive(Deserialize)]
    struct Stored {
        outcome: SubtaskOutcome,
    }
    let stored: Stored = decode(&bytes).expect("decode");
    assert_eq!(
        stored.outcome,
        SubtaskOutcome::Skipped("dependency 3 did not succeed".into())
    );
}

#[test]
fn content_types_are_recognised() {
    assert_eq!(
        Encoding::from_content_type(None).expect("none"),
        Encoding::Msgpack
    );
    assert_eq!(
        Encoding::from_content_type(Some("application/json; charset=utf-8")).expect("json"),
        Encoding::Json
    );
    assert_eq!(
        Encoding::from_content_type(Some("application/x-msgpack")).expect("x"),
        Encoding::Msgpack
    );
    assert!(Encoding::from_content_type(Some("text/plain")).is_err());
}

#[test]
fn missing_fields_and_wrong_types_are_refused() {
    assert!(Encoding::Json
        .decode::<TaskRequest>(br#"{"input": 1}"#)
        .is_err());
    assert!(Encoding::Json
        .decode::<TaskRequest>(br#"{"kind": 5, "input": 1}"#)
        .is_err());
    assert!(Encoding::Json
        .decode::<TaskRequest>(br#"{"kind": "k"}"#)
        .is_err());
    assert!(Encoding::Json
        .decode::<TaskRequest>(br#"{"kind": "k", "input": 1, "options": {"max_attemps": 2}}"#)
        .is_err());
    assert!(Encoding::Msgpack
        .decode::<TaskRequest>(b"\xc1garbage")
        .is_err());
}

#[test]
fn options_resolve_with_defaults_and_ranges() {
    let resolved = TaskOptions::default().resolve().expect("defaults");
    assert_eq!(resolved.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(resolved.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(resolved.on_failure, OnFailure::Fail);
    assert!(TaskOptions {
        max_attempts: Some(0),
        ..Default::default()
    }
    .resolve()
    .is_err());
    assert!(TaskOptions {
        timeout_ms: Some(0),
        ..Default::default()
    }
    .resolve()
    .is_err());
}

#[test]
fn kind_names_are_bounded() {
    assert!(validate_kind("range-sum").is_ok());
    assert!(validate_kind(&"k".repeat(crate::text::MAX_NAME_BYTES)).is_ok());
    assert!(validate_kind("").is_err());
    let error = validate_kind(&"k".repeat(crate::text::MAX_NAME_BYTES + 1)).expect_err("257 bytes");
    assert_eq!(
        error.to_string(),
        "kind is 257 bytes long; the limit is 256"
    );
}

#[test]
fn task_ids_are_checked() {
    assert!(validate_task_id("job-42:a/b").is_ok());
    assert!(validate_task_id("").is_err());
    assert!(validate_task_id("a b").is_err());
    assert!(validate_task_id("}x{").is_err());
    assert!(validate_task_id(&"x".repeat(MAX_TASK_ID_BYTES + 1)).is_err());
}

#[test]
fn subtask_messages_check_their_subtask_ids() {
    let subtask = SubtaskMessage {
        task: "t".into(),
        subtask: "0".into(),
        kind: "k".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 10,
        payload: ByteBuf::new(),
        worker_type: "default".into(),
        depends_on: vec![],
        depth: 0,
        deadline_at_ms: None,
        events: false,
        round: 1,
        usage: Vec::new(),
        max_tokens: None,
        fingerprint: None,
    };
    assert!(subtask.validate().is_ok());
    for bad in ["", "a\nb", "a\u{200b}b", &"s".repeat(MAX_TASK_ID_BYTES + 1)] {
        let message = SubtaskMessage {
            subtask: bad.into(),
            ..subtask.clone()
        };
        let error = message.validate().expect_err(bad).to_string();
        assert!(error.contains("subtask id"), "{error}");
    }
    let item = |id: &str| BatchItem {
        subtask: id.into(),
        payload: ByteBuf::new(),
        depends_on: vec![],
    };
    let batch = SubtaskBatch {
        task: "t".into(),
        kind: "k".into(),
        max_attempts: 3,
        timeout_ms: 10,
        worker_type: "default".into(),
        depth: 0,
        deadline_at_ms: None,
        events: false,
        round: 1,
        fingerprint: None,
        items: vec![item("0"), item("1")],
        max_tokens: None,
    };
    assert!(batch.validate().is_ok());
    let later_bad = SubtaskBatch {
        items: vec![item("0"), item("1\u{1b}[2J")],
        ..batch
    };
    let error = later_bad.validate().expect_err("second item").to_string();
    assert!(
        error.contains(
            "subtask id \"1\\u{1b}[2J\" must not contain whitespace, control or format characters"
        ),
        "{error}"
    );
}
