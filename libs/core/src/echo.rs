//! What an error may repeat of a caller's text. A value quoted back whole turns
//! a 20 KB field into 60 KB of `grpc-message` and `grpc-status-details-bin`
//! (above a few KB standard clients fail on the metadata limit instead of seeing
//! the error), and repeats personal data sent in the wrong field. So quoted text
//! loses its invisible characters ([`crate::invisible`]: they would hide what is
//! shown), anything shaped like an email address, and everything past a short
//! prefix.

use crate::invisible::is_invisible;

/// Most characters of a caller's value an error quotes.
pub const MAX_ECHO_CHARS: usize = 64;

/// What replaces an email address in an error.
pub const EMAIL_REDACTED: &str = "[email address]";

/// Marks a cut.
const ELLIPSIS: char = '…';

/// A caller's `value` as an error may quote it: cleaned (see the module doc) and
/// cut to [`MAX_ECHO_CHARS`] characters, with an ellipsis when cut. Backticks
/// become `'`, so the value cannot end the quotes around it (see [`bounded`]).
pub fn echo(value: &str) -> String {
    prefix(&clean(value).replace('`', "'"))
}

/// `text` (a message or description of ours, maybe quoting a caller) cleaned,
/// every span in backticks (our messages quote values so) cut to a short prefix
/// as [`echo`] cuts, and the whole cut to at most `max_bytes` bytes on a
/// character boundary, the ellipsis included.
pub fn bounded(text: &str, max_bytes: usize) -> String {
    let clean = clean(text);
    let text = if clean.contains('`') {
        // Odd parts are inside backticks; an unclosed quote runs to the end.
        let mut out = String::with_capacity(clean.len().min(max_bytes));
        for (i, part) in clean.split('`').enumerate() {
            if i > 0 {
                out.push('`');
            }
            if i % 2 == 1 {
                out.push_str(&prefix(part));
            } else {
                out.push_str(part);
            }
        }
        out
    } else {
        clean
    };
    cut(text, max_bytes)
}

/// The first [`MAX_ECHO_CHARS`] characters of `s`, with an ellipsis when cut.
fn prefix(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}{ELLIPSIS}", &s[..end]),
        None => s.to_string(),
    }
}

/// `text` cut to at most `max_bytes` bytes on a character boundary, ending with
/// an ellipsis when cut.
pub(crate) fn cut(mut text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(ELLIPSIS);
    text
}

/// Invisible characters dropped (white-space controls such as a newline become
/// a space) and email-shaped words replaced by [`EMAIL_REDACTED`].
fn clean(text: &str) -> String {
    let visible: String = text
        .chars()
        .filter_map(|c| match c {
            c if !is_invisible(c) => Some(c),
            c if c.is_whitespace() => Some(' '),
            _ => None,
        })
        .collect();
    if visible.contains('@') {
        redact_emails(&visible)
    } else {
        visible
    }
}

/// Characters that end a word around an `@`: white space and the quotes,
/// brackets and separators our messages put around a value.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || "`'\"<>()[]{},;:/=".contains(c)
}

/// Every word with text on both sides of an `@` replaced.
fn redact_emails(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = 0;
    for (i, c) in text.char_indices() {
        if ends_word(c) {
            push_word(&mut out, &text[word_start..i]);
            out.push(c);
            word_start = i + c.len_utf8();
        }
    }
    push_word(&mut out, &text[word_start..]);
    out
}

fn push_word(out: &mut String, word: &str) {
    // `@direct-marketing`, `x@`: nothing on one side, not an address.
    if word.trim_matches('@').contains('@') {
        out.push_str(EMAIL_REDACTED);
    } else {
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_cut_to_a_short_prefix_on_a_char_boundary() {
        let long = "é".repeat(20_000);
        let e = echo(&long);
        assert_eq!(e.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(echo("purposes/nope"), "purposes/nope");
        let b = bounded(&long, 100);
        assert!(b.len() <= 100, "{}", b.len());
        assert!(b.ends_with('…'));
        assert_eq!(bounded("short", 100), "short");
    }

    #[test]
    fn quoted_spans_are_cut_like_a_value() {
        let long = "z".repeat(5_000);
        let b = bounded(&format!("`{long}` is not a name; `short` is fine"), 512);
        assert_eq!(
            b,
            format!(
                "`{}…` is not a name; `short` is fine",
                "z".repeat(MAX_ECHO_CHARS)
            )
        );
        // An unclosed quote runs to the end.
        let b = bounded(&format!("unknown category `{long}"), 512);
        assert_eq!(
            b.chars().count(),
            "unknown category `".len() + MAX_ECHO_CHARS + 1
        );
        // A value cannot close its quotes early and escape the cut.
        let sneaky = format!("a`{long}");
        let quoted = bounded(&format!("`{}` is not a name", echo(&sneaky)), 512);
        assert!(quoted.len() < 100, "{quoted}");
    }

    #[test]
    fn invisible_characters_are_dropped() {
        assert_eq!(echo("a\u{200B}b\u{202E}c\u{FEFF}d\u{0}e"), "abcde");
        assert_eq!(echo("line\none\ttwo"), "line one two");
    }

    #[test]
    fn email_addresses_are_never_repeated() {
        assert_eq!(echo("ada.king@example.edu"), EMAIL_REDACTED);
        assert_eq!(
            echo("purposes/ada@example.edu"),
            format!("purposes/{EMAIL_REDACTED}")
        );
        assert_eq!(
            bounded("`x ada@example.edu, bob@b.fr` is not a name", 200),
            format!("`x {EMAIL_REDACTED}, {EMAIL_REDACTED}` is not a name")
        );
        // A zero-width space does not hide an address from the redaction.
        assert_eq!(echo("ada\u{200B}@example.edu"), EMAIL_REDACTED);
        assert_eq!(echo("ada@@example.edu"), EMAIL_REDACTED);
        // Not addresses.
        assert_eq!(echo("@direct-marketing"), "@direct-marketing");
        assert_eq!(echo("trailing@"), "trailing@");
        assert_eq!(echo("@"), "@");
    }
}
