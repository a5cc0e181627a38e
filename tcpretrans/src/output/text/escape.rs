//! Names from the kernel or /proc made safe for a terminal: whatever a
//! process calls itself, it cannot color, move or split our lines.
//!
//! No crate: std's `Debug` escaping already holds Unicode's tables of what
//! is printable, and the rest is a few lines.
use std::{borrow::Cow, fmt::Write as _};

/// `bytes` as text a terminal shows as is, escaped as in a Rust string:
/// `\\`, `\n`, `\r`, `\t`, `\xNN` for the other ASCII controls (DEL among
/// them) and for bytes that are not UTF-8, `\u{NNNN}` for other characters
/// that are not printable or that combine with their neighbour (C1
/// controls, bidi overrides, zero-width marks). Borrowed when nothing needs
/// escaping, as for almost every name.
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.chars().all(shown_as_is)
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str(r"\\"),
                '\n' => out.push_str(r"\n"),
                '\r' => out.push_str(r"\r"),
                '\t' => out.push_str(r"\t"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, r"\x{:02x}", u32::from(c));
                }
                c if shown_as_is(c) => out.push(c),
                c => out.extend(c.escape_unicode()),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, r"\x{byte:02x}");
        }
    }
    Cow::Owned(out)
}

/// Printable, not combining with its neighbour, and not our escape character.
fn shown_as_is(c: char) -> bool {
    match c {
        '\\' => false,
        ' '..='~' => true,
        // `escape_debug` leaves exactly these alone.
        c => !c.is_ascii() && c.escape_debug().len() == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_names_are_borrowed_unchanged() {
        for name in ["curl", "nginx: worker", "kworker/u8:2-ev", "élan", "名前"] {
            assert!(matches!(escape(name.as_bytes()), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(escape(b"\x1b[31mRED\nX"), r"\x1b[31mRED\nX");
        assert_eq!(escape(b"a\tb\rc"), r"a\tb\rc");
        assert_eq!(escape(b"nul\0del\x7f"), r"nul\x00del\x7f");
        // C1: CSI, which some terminals obey like ESC [.
        assert_eq!(escape("a\u{9b}31m".as_bytes()), r"a\u{9b}31m");
    }

    #[test]
    fn the_escape_character_is_escaped_so_output_is_unambiguous() {
        assert_eq!(escape(br"C:\x1b"), r"C:\\x1b");
        assert_ne!(escape(br"\n"), escape(b"\n"));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_bytes() {
        assert_eq!(escape(b"ab\xffc\xc3"), r"ab\xffc\xc3");
        // A name cut in the middle of a character (comm is 15 bytes).
        assert_eq!(escape(&"dé".as_bytes()[..2]), r"d\xc3");
    }

    #[test]
    fn invisible_and_combining_characters_are_escaped() {
        // Right-to-left override, zero-width space, no-break space, a
        // combining accent, line separator.
        assert_eq!(
            escape("a\u{202e}b\u{200b}c\u{a0}e\u{301}\u{2028}".as_bytes()),
            r"a\u{202e}b\u{200b}c\u{a0}e\u{301}\u{2028}"
        );
    }

    #[test]
    fn escaped_text_is_one_printable_line() {
        let every_byte: Vec<u8> = (0..=255).collect();
        let escaped = escape(&every_byte);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
    }
}
