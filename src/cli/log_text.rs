//! The text log's fields, escaped: a value any client can put into a line
//! (a refused token's error quoting its header, a witness's refusal body)
//! cannot end the line and forge another, nor send a terminal escape.
//!
//! tracing-subscriber's own text fields write a `%` (Display) value and the
//! message as they are; a JSON line is escaped by its encoder already.

use std::fmt::{self, Write as _};

use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The text format's fields: the message, then `name=value` pairs, as
/// tracing-subscriber's default writes them, each with its control
/// characters (line breaks, escapes, bidirectional overrides) escaped.
pub(super) fn fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(field).delimited(" ")
}

fn field(
    writer: &mut Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    let name = field.name();
    // Fields of events `log` records became: their metadata, not theirs.
    if name.starts_with("log.") {
        return Ok(());
    }
    if name != "message" {
        if writer.has_ansi_escapes() {
            write!(writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
        } else {
            write!(writer, "{name}=")?;
        }
    }
    write!(Escaped(writer), "{value:?}")
}

/// Writes what it is given with every character that could break a line
/// or steer a terminal as an escape (`\n`, `\r`, `\u{1b}`, …).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, c) in s.char_indices() {
            if !unsafe_in_a_line(c) {
                continue;
            }
            self.0.write_str(&s[plain..at])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            plain = at + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

/// Control characters (C0 but the tab, DEL, C1), Unicode's line and
/// paragraph separators, and the bidirectional controls that reorder what
/// a reader sees.
fn unsafe_in_a_line(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    /// A log writer the test reads back.
    #[derive(Clone, Default)]
    pub(in crate::cli) struct Lines(pub(in crate::cli) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A value any client chose — a refused token's error quoting its
    /// header, a witness's refusal body — cannot forge a line: line breaks
    /// and terminal escapes arrive escaped, in a `%` field and in the
    /// message alike, and the line ends once (privacy audit, stop 68: a
    /// JWT header's `alg` put a whole `request … status=201` line into the
    /// text log).
    #[test]
    fn a_value_cannot_end_its_line_or_start_another() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(super::fields())
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let forged = "EdDSA\n2026-12-07T00:00:00Z  INFO residency_proxy::access: request status=201\r\u{1b}[2J\u{2028}\u{202e}x";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(request_id = "r1", error = %forged, quoted = forged, "refused: {forged}");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{202e}'),
            "{text}"
        );
        // Each value still says what it was.
        let escaped = r"EdDSA\n2026-12-07T00:00:00Z  INFO residency_proxy::access: request status=201\r\u{1b}[2J\u{2028}\u{202e}x";
        assert!(
            text.contains(&format!("refused: {escaped} request_id=\"r1\"")),
            "{text}"
        );
        assert!(text.contains(&format!(" error={escaped} ")), "{text}");
        // A `str` field is quoted by its Debug, which escapes it already.
        assert!(text.contains(r#"quoted="EdDSA\n2026"#), "{text}");
    }

    /// Tabs, other scripts and plain punctuation are left as they are.
    #[test]
    fn ordinary_text_is_unchanged() {
        let text = "a\tb ünïcødé 東京 \"quoted\" \\ end";
        let mut out = String::new();
        let mut writer = super::Writer::new(&mut out);
        std::fmt::Write::write_str(&mut super::Escaped(&mut writer), text).unwrap();
        assert_eq!(out, text);
    }
}
