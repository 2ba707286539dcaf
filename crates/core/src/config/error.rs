//! [`ConfigError`]: what is wrong, where (a byte span into the file) and what would be valid.

use std::fmt::Write as _;
use std::ops::Range;

/// Separates message and help inside a serde custom error string (serde errors carry only
/// text; the value types of [`super::value`] encode both, [`ConfigError::from_toml`] splits).
pub(crate) const HELP_SEP: char = '\u{1f}';

/// A configuration error with its location.
///
/// `span` is a byte range into the config text; [`ConfigError::render`] turns it into the
/// `FILE:LINE:COL: message` form that `fulcrum check`, reloads and the admin API print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// What is wrong, e.g. ``unknown scheduler `fastest` ``.
    pub message: String,
    /// What would be valid, e.g. `valid: rr, wrr, lc, ...`, when that helps.
    pub help: Option<String>,
    /// Byte range of the offending key, value or table in the text (`None`: whole file).
    pub span: Option<Range<usize>>,
}

impl ConfigError {
    /// An error at `span` without help.
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Self {
            message: message.into(),
            help: None,
            span: Some(span),
        }
    }

    /// Adds (or replaces) the help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Maps an error of the `toml` crate (syntax or deserialization), keeping its span and
    /// rewording serde's messages to say what would be valid.
    pub fn from_toml(err: &toml::de::Error) -> Self {
        let raw = err.message().trim();
        let (message, help) = match raw.split_once(HELP_SEP) {
            Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
            None => reword_serde(raw),
        };
        Self {
            message,
            help,
            span: err.span(),
        }
    }

    /// Maps a TOML syntax error of `text`: one line of message (the parser's detail, e.g.
    /// "expected `]`", goes to the help), and a missing value after `=` said as such (the
    /// parser reports it as an empty message or as an "invalid string").
    pub fn from_syntax(err: &toml::de::Error, text: &str) -> Self {
        let raw = err.message().trim();
        let (first, rest) = raw.split_once('\n').unwrap_or((raw, ""));
        let mut e = Self {
            message: first.trim().to_owned(),
            help: (!rest.trim().is_empty()).then(|| rest.trim().replace('\n', "; ")),
            span: err.span(),
        };
        let at = e
            .span
            .as_ref()
            .map_or(text.len(), |s| s.start.min(text.len()));
        let before = text[..floor_char_boundary(text, at)].trim_end_matches([' ', '\t']);
        let after = text[floor_char_boundary(text, at)..].trim_start_matches([' ', '\t']);
        let value_missing =
            before.ends_with('=') && (after.is_empty() || after.starts_with(['\n', '\r', '#']));
        if value_missing {
            e.message = "missing value after `=`".into();
            e.help = Some(
                "write a value: a string \"text\", a number 10, true or false, an array [ ... ] or an inline table { ... }".into(),
            );
        } else if e.message.is_empty() {
            e.message = "invalid TOML syntax here".into();
            e.help = Some("see https://toml.io for the syntax of keys, values and tables".into());
        }
        e
    }

    /// 1-based line and column (in characters) of the span's start in `text`.
    pub fn line_col(&self, text: &str) -> Option<(usize, usize)> {
        self.span.as_ref().map(|s| line_col(text, s.start))
    }

    /// `FILE:LINE:COL: message`, and a second line `  help: ...` when there is help.
    /// Without a span: `FILE: message`.
    pub fn render(&self, file_name: &str, text: &str) -> String {
        let mut out = match self.line_col(text) {
            Some((line, col)) => format!("{file_name}:{line}:{col}: {}", self.message),
            None => format!("{file_name}: {}", self.message),
        };
        if let Some(help) = &self.help {
            let _ = write!(out, "\n  help: {help}");
        }
        out
    }
}

/// The largest character boundary of `text` at or below `pos` (clamped to the text).
fn floor_char_boundary(text: &str, pos: usize) -> usize {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    pos
}

/// 1-based line and character column of byte offset `pos` in `text` (clamped to the text,
/// and to a character boundary).
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = floor_char_boundary(text, pos);
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Rewords serde's generic messages (`unknown field`, `missing field`) into the contract's
/// vocabulary (keys), moving the list of valid choices into the help.
fn reword_serde(raw: &str) -> (String, Option<String>) {
    if let Some(rest) = raw.strip_prefix("unknown field ") {
        return match rest.split_once(", expected ") {
            Some((field, expected)) => (
                format!("unknown key {field}"),
                Some(format!("valid keys here: {}", list_of_backticked(expected))),
            ),
            None => match rest.split_once(", there are no fields") {
                Some((field, _)) => (format!("unknown key {field}"), None),
                None => (format!("unknown key {rest}"), None),
            },
        };
    }
    if let Some(rest) = raw.strip_prefix("missing field ") {
        return (format!("missing key {rest} in this table"), None);
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        return (format!("wrong type: {rest}"), None);
    }
    (raw.to_owned(), None)
}

/// "one of `a`, `b`, `c`" / "`a` or `b`" / "`a`" -> "a, b, c".
fn list_of_backticked(expected: &str) -> String {
    let names: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter_map(|(i, part)| (i % 2 == 1).then_some(part))
        .collect();
    if names.is_empty() {
        expected.to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes: "= 2" starts at byte 10, char column 4.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn rewords_unknown_field() {
        let (m, h) = reword_serde("unknown field `bogus`, expected one of `name`, `listen`");
        assert_eq!(m, "unknown key `bogus`");
        assert_eq!(h.as_deref(), Some("valid keys here: name, listen"));
        let (_, h) = reword_serde("unknown field `zz`, expected `pool`");
        assert_eq!(h.as_deref(), Some("valid keys here: pool"));
    }

    #[test]
    fn render_with_and_without_help() {
        let text = "x = 1\ny = 2\n";
        let e = ConfigError::new("bad y", 6..7).with_help("use x");
        assert_eq!(e.render("f.toml", text), "f.toml:2:1: bad y\n  help: use x");
        let e = ConfigError {
            message: "empty".into(),
            help: None,
            span: None,
        };
        assert_eq!(e.render("f.toml", text), "f.toml: empty");
    }
}
