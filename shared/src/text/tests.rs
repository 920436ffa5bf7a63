//! Unit tests of the escaping and bounding of user text.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn plain_text_is_kept() {
    assert_eq!(bounded("range-sum", 64), "range-sum");
    assert_eq!(bounded("", 64), "");
    assert_eq!(bounded("naïve – 日本語", 64), "naïve – 日本語");
}

#[test]
fn control_characters_and_bidi_marks_are_escaped() {
    assert_eq!(
        bounded("a\nb\r\tc\u{1b}[31mred\u{0}", 100),
        "a\\nb\\r\\tc\\u{1b}[31mred\\u{0}"
    );
    assert_eq!(bounded("x\u{202e}y", 100), "x\\u{202e}y");
    assert_eq!(quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
}

#[test]
fn long_text_is_cut_with_a_marker_within_the_bound() {
    let long = "k".repeat(10_000);
    let cut = bounded(&long, 256);
    assert!(cut.len() <= 256, "{} bytes", cut.len());
    let kept = cut.find('…').unwrap();
    assert_eq!(&cut[kept..], format!("…[+{} bytes]", 10_000 - kept));
    assert!(cut.starts_with("kkkk"));
}

#[test]
fn the_cut_never_splits_a_character_or_an_escape() {
    // Every bound from 0 to past the whole text, over multi-byte characters and escapes.
    let text = "é日\n本\u{1b}語🎉x".repeat(5);
    for max in 0..=120 {
        let cut = bounded(&text, max);
        // A String is valid UTF-8 by construction; what matters is no half escape.
        let body = cut.split('…').next().unwrap();
        assert!(!body.ends_with('\\'), "max {max}: {cut:?}");
        assert!(!body.ends_with("\\u{1"), "max {max}: {cut:?}");
        assert!(text
            .replace('\n', "\\n")
            .replace('\u{1b}', "\\u{1b}")
            .starts_with(body));
        if max >= 24 {
            assert!(cut.len() <= max, "max {max}: {} bytes", cut.len());
        }
    }
}

#[test]
fn bounding_twice_changes_nothing() {
    for text in ["x\ny", &"z\u{1b}".repeat(3000), "ok"] {
        let once = reason(text);
        assert_eq!(reason(&once), once);
    }
}

#[test]
fn a_long_name_is_quoted_within_the_name_bound() {
    // The example of docs/security.md.
    let quoted = quoted(&"k".repeat(10_000));
    assert!(quoted.ends_with("k…[+9761 bytes]\""), "{quoted}");
    assert!(quoted.len() <= MAX_NAME_BYTES + 2);
}
