//! Characters a reader cannot see: control characters (Cc), format characters
//! (Cf: zero-width space/joiners, soft hyphen, BOM, bidi controls, tags, ...),
//! every other default-ignorable code point (variation selectors, Hangul fillers,
//! the combining grapheme joiner) and the line/paragraph separators.
//!
//! Two strings that differ only by such characters look alike and are not equal,
//! so identifiers refuse them ([`crate::subject`]) and errors drop them before
//! quoting a caller's text ([`crate::error`]). The Unicode data is ICU4X's
//! (`icu_properties`), which `idna` already brings; no hand-kept table.

use icu_properties::{
    CodePointMapData, CodePointMapDataBorrowed, CodePointSetData, CodePointSetDataBorrowed,
    props::{DefaultIgnorableCodePoint, GeneralCategory},
};

const CATEGORY: CodePointMapDataBorrowed<'static, GeneralCategory> =
    CodePointMapData::<GeneralCategory>::new();
const IGNORABLE: CodePointSetDataBorrowed<'static> =
    CodePointSetData::new::<DefaultIgnorableCodePoint>();

/// Whether `c` is invisible in the sense of this module.
pub fn is_invisible(c: char) -> bool {
    if c.is_ascii() {
        // The only invisible ASCII are the C0 controls and DEL.
        return c.is_ascii_control();
    }
    matches!(
        CATEGORY.get(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || IGNORABLE.contains(c)
}

/// The first invisible character of `s`, if any.
pub fn first_invisible(s: &str) -> Option<char> {
    s.chars().find(|&c| is_invisible(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classes_of_the_probe_are_invisible() {
        for c in [
            '\u{200B}', // zero-width space
            '\u{200C}', // zero-width non-joiner
            '\u{200D}', // zero-width joiner
            '\u{2060}', // word joiner
            '\u{FEFF}', // byte order mark
            '\u{00AD}', // soft hyphen
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}', // embeddings, overrides
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}', // isolates
            '\u{200E}',
            '\u{200F}',
            '\u{061C}', // marks
            '\u{0000}',
            '\u{0007}',
            '\u{001B}',
            '\u{007F}',
            '\u{0085}',  // controls
            '\u{034F}',  // combining grapheme joiner
            '\u{FE0F}',  // variation selector 16
            '\u{3164}',  // Hangul filler
            '\u{E0041}', // tag latin capital A
            '\u{2028}',
            '\u{2029}', // line and paragraph separators
        ] {
            assert!(is_invisible(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn letters_marks_and_spaces_are_visible() {
        for c in [
            'a', 'Z', '0', '@', '.', ' ', 'é', '\u{0301}', 'ß', 'ё', '中', '\u{00A0}',
        ] {
            assert!(!is_invisible(c), "U+{:04X}", c as u32);
        }
        assert_eq!(first_invisible("ab\u{200B}c\u{FEFF}"), Some('\u{200B}'));
        assert_eq!(first_invisible("élève"), None);
    }
}
