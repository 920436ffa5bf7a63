//! Unit tests of dead letters' description and requeued copies.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::*;

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert(ShortString::from(*name), value.clone());
    }
    table
}

#[test]
fn a_letter_of_the_broker_reads_its_queue_reason_and_time_from_x_death() {
    let death = headers(&[
        ("queue", long("chorus.subtasks")),
        ("reason", long("delivery_limit")),
        ("time", AMQPValue::Timestamp(1_764_503_223)),
    ]);
    let properties = BasicProperties::default().with_headers(headers(&[(
        "x-death",
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    )]));
    let letter = describe(b"abc", &properties, false);
    assert_eq!(letter.queue.as_deref(), Some("chorus.subtasks"));
    assert_eq!(letter.reason.as_deref(), Some("delivery_limit"));
    assert_eq!(letter.time_s, Some(1_764_503_223));
    assert_eq!(letter.size, 3);
    assert_eq!(letter.key.len(), 12);
}

#[test]
fn a_requeued_copy_keeps_only_its_own_headers() {
    let properties = BasicProperties::default().with_headers(headers(&[
        ("x-chorus-reason", long("boom")),
        ("x-chorus-queue", long("chorus.tasks")),
        ("x-chorus-task", long("t")),
        ("x-death", AMQPValue::FieldArray(FieldArray::default())),
        ("x-last-death-queue", long("q")),
        ("x-delivery-count", AMQPValue::LongLongInt(3)),
        ("x-mine", long("kept")),
    ]));
    let copy = without_dead_letter_headers(&properties);
    let kept = copy.headers().clone().unwrap_or_default();
    let names: Vec<&str> = kept.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-mine"]);
}

#[test]
fn keys_tell_letters_apart_and_stay_the_same() {
    let h = headers(&[("x-chorus-reason", long("boom"))]);
    assert_eq!(key_of(b"a", &h), key_of(b"a", &h));
    assert_ne!(key_of(b"a", &h), key_of(b"b", &h));
    // A look that gives the letter back raises its delivery count: the key stays.
    let counted = headers(&[
        ("x-chorus-reason", long("boom")),
        ("x-delivery-count", AMQPValue::LongLongInt(2)),
    ]);
    assert_eq!(key_of(b"a", &h), key_of(b"a", &counted));
}
