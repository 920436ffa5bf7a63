//! What strict decoding allocates for worst-case bodies of the largest message (the default of
//! `--max-message-bytes`, 8 MiB): at most a small multiple of the body, measured by a counting
//! global allocator (this test binary's own, so one test only: tests in parallel would count
//! each other's allocations).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chorus_shared::kinds::{
    range_sum::RangeSumInput, report::ReportInput, wordfreq::WordFreqInput,
};
use chorus_shared::protocol::{strict, Control, Encoding, RawInput, TaskRequest};
use peak_alloc::PeakAlloc;
use serde::de::DeserializeOwned;

/// The allocator of this binary: the system's, counting the bytes live and their peak (a
/// reallocation counts the old block and the new one, as a copying one needs).
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// The default `--max-message-bytes`: the largest body a service decodes.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The bound this test holds decoding to: peak bytes allocated over the body's size.
const MAX_MULTIPLE: usize = 8;

/// Peak bytes allocated while `decode` runs, above what was live before it.
fn peak_of<T>(decode: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let result = decode();
    (ALLOCATOR.peak_usage() - before, result)
}

/// A MessagePack map of `fields`, the last one's value an array of `MAX_BODY` worth of
/// `element` (one encoded element, repeated).
fn msgpack_body(fields: &[(&str, &str)], last: &str, element: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(MAX_BODY);
    rmp::encode::write_map_len(&mut body, u32::try_from(fields.len() + 1).unwrap()).unwrap();
    for (name, value) in fields {
        rmp::encode::write_str(&mut body, name).unwrap();
        rmp::encode::write_str(&mut body, value).unwrap();
    }
    rmp::encode::write_str(&mut body, last).unwrap();
    let count = (MAX_BODY - body.len() - 5) / element.len();
    rmp::encode::write_array_len(&mut body, u32::try_from(count).unwrap()).unwrap();
    for _ in 0..count {
        body.extend_from_slice(element);
    }
    body
}

/// The same as JSON: `{"<name>": "<value>", ..., "<last>": [<element>,<element>,...]}`.
fn json_body(fields: &[(&str, &str)], last: &str, element: &str) -> Vec<u8> {
    let mut body = String::with_capacity(MAX_BODY);
    body.push('{');
    for (name, value) in fields {
        body.push_str(&format!("\"{name}\":\"{value}\","));
    }
    body.push_str(&format!("\"{last}\":["));
    while body.len() + element.len() + 3 < MAX_BODY {
        body.push_str(element);
        body.push(',');
    }
    body.push_str(&format!("{element}]}}"));
    body.into_bytes()
}

/// Decodes `body` as `T`; checks the peak against the bound and the outcome against `accepted`.
fn check<T: DeserializeOwned>(what: &str, body: &[u8], msgpack: bool, accepted: bool) {
    let (peak, decoded) = peak_of(|| {
        if msgpack {
            strict::from_msgpack::<T>(body).map(drop)
        } else {
            strict::from_json::<T>(body).map(drop)
        }
    });
    println!(
        "{what}: body {} bytes, peak {peak} bytes ({:.2}x), {}",
        body.len(),
        peak as f64 / body.len() as f64,
        match &decoded {
            Ok(()) => "accepted".to_owned(),
            Err(e) => format!("refused: {e}"),
        }
    );
    assert_eq!(decoded.is_ok(), accepted, "{what}: {decoded:?}");
    assert!(
        peak <= MAX_MULTIPLE * body.len(),
        "{what}: peak {peak} bytes for a body of {}",
        body.len()
    );
}

#[test]
fn worst_case_bodies_cost_a_small_multiple_of_their_size() {
    let kind = [("kind", "range-sum")];
    let nil = [0xc0];
    let empty_string = [0xa0];
    // Seven-character strings: 2^20 of them fill the body, each costs its target a `String` of
    // 24 bytes and 7 on the heap.
    let string = [0xa7, b'a', b'b', b'c', b'd', b'e', b'f', b'g'];
    // A task request whose input is an array of one-byte nils: refused past 2^20 elements.
    check::<TaskRequest<RawInput>>(
        "request, input of nils",
        &msgpack_body(&kind, "input", &nil),
        true,
        false,
    );
    check::<TaskRequest<RawInput>>(
        "request, input of nils, JSON",
        &json_body(&[("kind", "range-sum")], "input", "0"),
        false,
        false,
    );
    // Under 2^20 elements: accepted, the input kept as its MessagePack bytes.
    check::<TaskRequest<RawInput>>(
        "request, input of strings",
        &msgpack_body(&kind, "input", &string),
        true,
        true,
    );
    check::<TaskRequest<RawInput>>(
        "request, input of strings, JSON",
        &json_body(&[("kind", "range-sum")], "input", "\"abcdef\""),
        false,
        true,
    );
    // A control message: its fields are read as they come, nothing buffered.
    check::<Control>(
        "control, unknown field of nils",
        &msgpack_body(&[("op", "cancel"), ("task", "t")], "zzz", &nil),
        true,
        false,
    );
    // The built-in kinds' inputs: lists of strings are their largest expansion.
    check::<WordFreqInput>(
        "wordfreq, paths of empty strings",
        &msgpack_body(&[], "paths", &empty_string),
        true,
        false,
    );
    check::<WordFreqInput>(
        "wordfreq, paths of strings",
        &msgpack_body(&[], "paths", &string),
        true,
        true,
    );
    check::<ReportInput>(
        "report, sections of strings",
        &msgpack_body(&[("topic", "t")], "sections", &string),
        true,
        true,
    );
    check::<RangeSumInput>(
        "range-sum, after of pairs",
        &msgpack_body(&[], "after", &[0x92, 0x01, 0x00]),
        true,
        false,
    );
    // A public message as a client reads it: the generic value, refused past 2^20 elements.
    check::<TaskRequest>(
        "request as a generic value, input of nils",
        &msgpack_body(&kind, "input", &nil),
        true,
        false,
    );
    assert!(Encoding::Msgpack
        .decode::<Control>(&msgpack_body(
            &[("op", "cancel"), ("task", "t")],
            "zzz",
            &nil
        ))
        .is_err());
}
