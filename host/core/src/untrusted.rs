//! Text from outside the host's trust (a plugin's log message and fields, a name its
//! `describe()` claims, a trap's stderr) made safe to write into the daemon's log:
//! [`escape_untrusted`].
//!
//! The text log is one event per line, each starting with the daemon's own timestamp, level and
//! target. A newline inside guest text would start a line the guest wrote whole, one that can
//! look like the daemon's (`... ERROR evolve::api: ...`); a carriage return or an ANSI sequence
//! can rewrite what a terminal shows; bidirectional overrides can reorder what a reader sees.
//! The JSON log escapes control characters itself, but a consumer that prints a decoded
//! `message` gets them back, so guest text is escaped before it reaches either format.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character that could end a log line, drive a terminal or reorder what a
/// reader sees replaced by a visible escape:
///
/// - `\n`, `\r` and `\t` as those two characters;
/// - every other C0 control, DEL and every C1 control (`U+0080`–`U+009F`: `U+0085` ends a line
///   for some readers, `U+009B` starts a terminal sequence) as `\u{..}`;
/// - the Unicode line and paragraph separators (`U+2028`, `U+2029`), which some viewers break
///   lines at, as `\u{2028}`, `\u{2029}`;
/// - the bidirectional marks, embeddings, overrides and isolates (`U+061C`, `U+200E`,
///   `U+200F`, `U+202A`–`U+202E`, `U+2066`–`U+2069`) as `\u{..}`.
///
/// Everything else passes unchanged, backslashes included: a `\n` the guest wrote as two
/// characters stays two harmless characters, and escaping is idempotent, so text escaped where
/// it enters the host (an error message) can be escaped again where it is logged. Borrows when
/// nothing needs escaping, which is the common case.
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(needs_escape) else {
        return Cow::Borrowed(text);
    };
    // Most escapes grow one character into 2-8; a little headroom avoids a few reallocations.
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape_untrusted`] of an owned string, reusing it when nothing needs escaping.
pub fn escape_untrusted_owned(text: String) -> String {
    if text.contains(needs_escape) {
        escape_untrusted(&text).into_owned()
    } else {
        text
    }
}

/// Whether [`escape_untrusted`] rewrites `c`.
fn needs_escape(c: char) -> bool {
    // `is_control` is Unicode's Cc category: C0 (U+0000-U+001F), DEL and C1 (U+007F-U+009F).
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_start_a_forged_log_line() {
        let forged = "ok\n2026-01-01T00:00:00Z ERROR evolve::api: daemon panicked";
        let escaped = escape_untrusted(forged);
        assert_eq!(
            escaped,
            "ok\\n2026-01-01T00:00:00Z ERROR evolve::api: daemon panicked"
        );
        assert_eq!(escaped.lines().count(), 1);
    }

    #[test]
    fn carriage_returns_tabs_and_every_c0_and_c1_control_are_escaped() {
        assert_eq!(escape_untrusted("a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(
            escape_untrusted("\x1b[2J\x1b[31mred"),
            "\\u{1b}[2J\\u{1b}[31mred"
        );
        assert_eq!(escape_untrusted("\0\x07\x7f"), "\\u{0}\\u{7}\\u{7f}");
        assert_eq!(escape_untrusted("\u{85}\u{9b}"), "\\u{85}\\u{9b}");
        for code in (0..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(code).unwrap_or_default();
            let escaped = escape_untrusted(&c.to_string()).into_owned();
            assert!(
                escaped.starts_with('\\') && !escaped.chars().any(char::is_control),
                "U+{code:04X} became {escaped:?}"
            );
        }
    }

    #[test]
    fn unicode_line_separators_and_bidi_controls_are_escaped() {
        assert_eq!(
            escape_untrusted("a\u{2028}b\u{2029}c"),
            "a\\u{2028}b\\u{2029}c"
        );
        assert_eq!(
            escape_untrusted("\u{202e}desrever\u{202c}"),
            "\\u{202e}desrever\\u{202c}"
        );
        assert_eq!(
            escape_untrusted("\u{2066}\u{2069}\u{200e}\u{200f}\u{61c}"),
            "\\u{2066}\\u{2069}\\u{200e}\\u{200f}\\u{61c}"
        );
    }

    #[test]
    fn clean_text_is_borrowed_unchanged_including_non_ascii_and_backslashes() {
        for clean in [
            "plain",
            "",
            "é 日本 🦀",
            r"C:\path\n stays",
            "quote \" and 'x'",
        ] {
            assert!(
                matches!(escape_untrusted(clean), Cow::Borrowed(s) if s == clean),
                "{clean:?}"
            );
        }
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = escape_untrusted("a\nb\x1b\u{2028}\u{202e}").into_owned();
        assert_eq!(escape_untrusted(&once), once);
    }

    #[test]
    fn the_owned_form_escapes_the_same_and_keeps_clean_strings() {
        assert_eq!(escape_untrusted_owned("x\ny".to_owned()), "x\\ny");
        assert_eq!(escape_untrusted_owned("clean".to_owned()), "clean");
    }
}
