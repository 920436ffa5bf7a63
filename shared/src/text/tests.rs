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
fn line_and_paragraph_separators_are_escaped() {
    assert_eq!(bounded("a\u{2028}b\u{2029}c", 100), "a\\u{2028}b\\u{2029}c");
}

#[test]
fn zero_width_characters_are_escaped() {
    for (c, escaped) in [
        ('\u{200b}', "\\u{200b}"),
        ('\u{200c}', "\\u{200c}"),
        ('\u{200d}', "\\u{200d}"),
        ('\u{2060}', "\\u{2060}"),
        ('\u{feff}', "\\u{feff}"),
    ] {
        assert_eq!(
            bounded(&format!("ad{c}min"), 100),
            format!("ad{escaped}min")
        );
    }
}

#[test]
fn every_format_character_is_escaped() {
    // Cf beyond the bidirectional and zero-width ones: soft hyphen, invisible operators,
    // interlinear annotation, the language tags, Arabic and Syriac marks.
    for c in [
        '\u{00ad}',
        '\u{0600}',
        '\u{070f}',
        '\u{2061}',
        '\u{2064}',
        '\u{fff9}',
        '\u{e0001}',
        '\u{e007f}',
        '\u{061c}',
        '\u{2066}',
    ] {
        let out = bounded(&c.to_string(), 100);
        assert_eq!(out, c.escape_default().to_string(), "{:?}", c);
    }
    // Visible text of other categories is kept: spaces, marks, symbols, emoji.
    for text in ["a b", "e\u{301}", "€ ©", "🎉", "\u{a0}"] {
        assert_eq!(bounded(text, 100), text);
    }
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
