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

/// A serde error, read back from the text the `toml` crate made of it.
///
/// Why text: `toml::de::Error` keeps only a message and a span. serde's derived code reports
/// an unknown or missing field by calling `serde::de::Error::unknown_field` /
/// `missing_field` on the deserializer's error type, and `toml` turns the call into text at
/// once. `serde_path_to_error` does not help: it wraps the deserializer but keeps its error
/// type, so the calls still reach `toml`; keeping the structure would take a deserializer of
/// our own around `toml`'s (and `toml` attaches spans only to its own error). So the texts
/// are read here, in one place for the messages and the recovery of [`super::recover`], and
/// the test `serde_texts_are_read` fails when an upgrade of serde or `toml` changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SerdeError<'a> {
    /// ``unknown field `key`, expected one of `a`, `b` `` (or `` expected `a` ``, or
    /// `there are no fields`).
    UnknownField { key: &'a str, valid: Vec<&'a str> },
    /// ``missing field `key` ``.
    MissingField(&'a str),
    /// `invalid type: <what came>, expected <what is valid>`: the rest.
    InvalidType(&'a str),
    /// Anything else (a custom message, a syntax error).
    Other(&'a str),
}

impl<'a> SerdeError<'a> {
    /// Reads `message` (of `toml::de::Error::message`).
    pub(crate) fn read(message: &'a str) -> Self {
        let msg = message.trim();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            if let Some((key, after)) = rest.split_once('`') {
                let valid = after
                    .strip_prefix(", expected ")
                    .map(backticked)
                    .unwrap_or_default();
                return Self::UnknownField { key, valid };
            }
        }
        if let Some(rest) = msg.strip_prefix("missing field ") {
            return Self::MissingField(rest.trim().trim_matches('`'));
        }
        if let Some(rest) = msg.strip_prefix("invalid type: ") {
            return Self::InvalidType(rest);
        }
        Self::Other(msg)
    }
}

/// Rewords serde's generic messages (`unknown field`, `missing field`) into the contract's
/// vocabulary (keys), moving the list of valid choices into the help.
fn reword_serde(raw: &str) -> (String, Option<String>) {
    match SerdeError::read(raw) {
        SerdeError::UnknownField { key, valid } => (
            format!("unknown key `{key}`"),
            (!valid.is_empty()).then(|| format!("valid keys here: {}", valid.join(", "))),
        ),
        SerdeError::MissingField(key) => (format!("missing key `{key}` in this table"), None),
        SerdeError::InvalidType(rest) => (format!("wrong type: {rest}"), None),
        SerdeError::Other(msg) => (msg.to_owned(), None),
    }
}

/// "one of `a`, `b`, `c`" / "`a` or `b`" / "`a`" -> [a, b, c].
fn backticked(expected: &str) -> Vec<&str> {
    expected
        .split('`')
        .enumerate()
        .filter_map(|(i, part)| (i % 2 == 1).then_some(part))
        .collect()
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
        let (m, h0) = reword_serde("unknown field `zz`, there are no fields");
        assert_eq!((m.as_str(), h0), ("unknown key `zz`", None));
        assert_eq!(h.as_deref(), Some("valid keys here: name, listen"));
        let (_, h) = reword_serde("unknown field `zz`, expected `pool`");
        assert_eq!(h.as_deref(), Some("valid keys here: pool"));
    }

    /// The texts `toml` makes of serde's errors, as [`SerdeError::read`] reads them: an
    /// upgrade that changes them fails here, not silently in the messages.
    #[test]
    fn serde_texts_are_read() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Two {
            name: String,
            listen: u16,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct One {
            pool: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct None_ {}
        let err = |r: Result<(), toml::de::Error>| r.expect_err("an error").message().to_owned();
        let e = err(toml::from_str::<Two>("name = \"a\"\nlisten = 1\nbogus = 1").map(drop));
        assert_eq!(
            SerdeError::read(&e),
            SerdeError::UnknownField {
                key: "bogus",
                valid: vec!["name", "listen"]
            }
        );
        assert_eq!(
            ConfigError::from_toml(
                &toml::from_str::<Two>("name = \"a\"\nlisten = 1\nbogus = 1").expect_err("error")
            )
            .help
            .as_deref(),
            Some("valid keys here: name, listen")
        );
        let e = err(toml::from_str::<One>("pool = \"p\"\nzz = 1").map(drop));
        assert_eq!(
            SerdeError::read(&e),
            SerdeError::UnknownField {
                key: "zz",
                valid: vec!["pool"]
            }
        );
        let e = err(toml::from_str::<None_>("zz = 1").map(drop));
        assert_eq!(
            SerdeError::read(&e),
            SerdeError::UnknownField {
                key: "zz",
                valid: vec![]
            }
        );
        let e = err(toml::from_str::<Two>("name = \"a\"").map(drop));
        assert_eq!(SerdeError::read(&e), SerdeError::MissingField("listen"));
        assert_eq!(reword_serde(&e).0, "missing key `listen` in this table");
        let e = err(toml::from_str::<Two>("name = 1\nlisten = 1").map(drop));
        assert_eq!(
            SerdeError::read(&e),
            SerdeError::InvalidType("integer `1`, expected a string")
        );
        assert_eq!(
            reword_serde(&e).0,
            "wrong type: integer `1`, expected a string"
        );
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
