//! Text that came from a message (kind names, ids, handlers' reasons), made safe to write where
//! Chorus writes it — log lines, the `x-chorus-reason` header of dead letters, outcome errors:
//! control characters, invisible format characters (bidirectional overrides, zero-width
//! characters) and the line and paragraph separators are escaped, and the text is cut to a bounded length with a marker saying how much was left out.
//! A submitter can then neither forge log lines nor blow up a header, a log file or an outcome.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest rendering, in bytes, of one value taken from a message (a kind name, an id) inside
/// a sentence of Chorus's own; above [`crate::protocol::MAX_TASK_ID_BYTES`], so a valid id is
/// never cut.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest rendering, in bytes, of a whole reason or error message (Chorus's sentence with the
/// values in it, or a handler's own message) in a log line, a dead letter's header or an
/// outcome error.
pub const MAX_REASON_BYTES: usize = 2048;

/// Whether `c` is written escaped (ids may not hold such characters at all): the Unicode control characters (`Cc`: newlines, escape
/// sequences), the format characters (`Cf`: the bidirectional marks and overrides that reorder
/// how a terminal shows the rest of the line, "Trojan source", CVE-2021-42574; the zero-width
/// characters U+200B..U+200D, U+2060 and U+FEFF that hide text or make two names look alike;
/// the other invisible ones), and the line and paragraph separators U+2028 and U+2029 (`Zl`,
/// `Zp`), which many log viewers and JSON-in-JavaScript readers take for a line break.
pub fn escapes(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// `text` escaped and cut to at most `max_bytes` bytes in all, the marker `…[+N bytes]`
/// included when cut (`N`: bytes of `text` left out). Control characters become `\n`, `\r`,
/// `\t` or `\u{1b}` (Rust's `char::escape_default` forms), as do the format characters and
/// separators (`\u{200b}`, `\u{2028}`);
/// everything else is kept, and the cut never splits a character or an escape. Idempotent: what
/// it returns has nothing left to escape and fits, so every sink may apply it again.
pub fn bounded(text: &str, max_bytes: usize) -> String {
    render(text, max_bytes, false)
}

/// One value from a message inside a sentence: [`bounded`] to [`MAX_NAME_BYTES`], in double
/// quotes so that where it starts and ends stays clear (a `"` inside is written `\"`).
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", render(name, MAX_NAME_BYTES, true))
}

/// A whole reason or error message: [`bounded`] to [`MAX_REASON_BYTES`].
pub fn reason(text: &str) -> String {
    bounded(text, MAX_REASON_BYTES)
}

/// [`bounded`], with `"` escaped too when `quote` is set.
fn render(text: &str, max_bytes: usize, quote: bool) -> String {
    let escape = |c: char| escapes(c) || (quote && c == '"');
    let escaped_len: usize = text
        .chars()
        .map(|c| {
            if escape(c) {
                c.escape_default().len()
            } else {
                c.len_utf8()
            }
        })
        .sum();
    let fits = escaped_len <= max_bytes;
    // Room for the longest marker this text can need, so that the marker fits too.
    let room = if fits {
        max_bytes
    } else {
        max_bytes.saturating_sub(marker(text.len()).len())
    };
    let mut out = String::with_capacity(escaped_len.min(max_bytes));
    for (offset, c) in text.char_indices() {
        let width = if escape(c) {
            c.escape_default().len()
        } else {
            c.len_utf8()
        };
        if out.len() + width > room {
            out.push_str(&marker(text.len() - offset));
            return out;
        }
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The marker of a cut that left out `bytes` bytes.
fn marker(bytes: usize) -> String {
    format!("…[+{bytes} bytes]")
}

#[cfg(test)]
mod tests;
