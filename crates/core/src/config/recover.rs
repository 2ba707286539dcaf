//! Every error of a file in one go, and where a key or value is in the text.
//!
//! serde stops at the first error, so [`deserialize`] repeats: it notes the error, patches
//! the text so that the error is gone and deserializes again, until the file deserializes
//! or a patch is not possible. A misspelled key is renamed to the key it most resembles
//! (the "did you mean" of the message), so the rest of the file is checked as the user
//! meant it; an unknown key without a close match is blanked; so is a key whose value is
//! bad. Blanking keeps every byte offset and renaming is recorded, so every error is
//! reported at its place in the original text.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

use super::error::{ConfigError, SerdeError};
use super::raw::RawConfig;

/// At most this many deserialization errors are reported for one file.
const MAX_ERRORS: usize = 64;

/// The outcome of [`deserialize`].
pub(super) struct Recovered {
    /// The raw config of the patched text, when the patches allowed one.
    pub raw: Option<RawConfig>,
    /// The patched text (the original when nothing was wrong).
    pub text: String,
    /// Whether the patched text means what the original meant, except for misspelled keys
    /// read as their suggestion: then cross-key checks on `raw` are worth reporting.
    pub faithful: bool,
    /// Errors, with spans into the original text.
    pub errors: Vec<ConfigError>,
    renames: Vec<Rename>,
}

/// A key renamed in the text: at `at`, `old_len` bytes became `new_len` bytes.
struct Rename {
    at: usize,
    old_len: usize,
    new_len: usize,
}

impl Recovered {
    /// Maps a span of the patched text back to the original.
    pub fn map_span(&self, span: Range<usize>) -> Range<usize> {
        let map = |mut pos: usize| {
            for r in self.renames.iter().rev() {
                if pos >= r.at + r.new_len {
                    pos = pos - r.new_len + r.old_len;
                } else if pos > r.at {
                    pos = r.at;
                }
            }
            pos
        };
        map(span.start)..map(span.end)
    }
}

/// Deserializes `text`, collecting every error (see the module docs). A syntax error is
/// alone: `Err`.
pub(super) fn deserialize(text: &str) -> Result<Recovered, ConfigError> {
    let first = toml::from_str::<RawConfig>(text);
    if first.is_err() {
        text.parse::<toml::Table>()
            .map_err(|e| ConfigError::from_syntax(&e, text))?;
    }
    let mut out = Recovered {
        raw: first.ok(),
        text: text.to_owned(),
        faithful: true,
        errors: Vec::new(),
        renames: Vec::new(),
    };
    // Blanked keys, to recognise a "missing key" that a blank caused.
    let mut blanked: Vec<(String, Range<usize>)> = Vec::new();
    while out.raw.is_none() && out.errors.len() < MAX_ERRORS {
        let err = match toml::from_str::<RawConfig>(&out.text) {
            Ok(raw) => {
                out.raw = Some(raw);
                break;
            }
            Err(e) => e,
        };
        let mut ce = ConfigError::from_toml(&err);
        let Some(span) = ce.span.clone() else {
            out.errors.push(ce);
            break;
        };
        let read = SerdeError::read(err.message());
        let patched = if let SerdeError::UnknownField { key, valid } = &read {
            let suggestion = did_you_mean(key, valid);
            if let Some(s) = suggestion {
                ce.help = Some(match ce.help.take() {
                    Some(h) => format!("did you mean `{s}`? {h}"),
                    None => format!("did you mean `{s}`?"),
                });
            }
            suggestion
                .and_then(|s| rename(&mut out, span.clone(), s))
                .or_else(|| blank(&out.text, &span))
                .map(|text| (text, None))
        } else if let SerdeError::MissingField(key) = read {
            // A key blanked for a bad value was already reported: not again as missing.
            // (It was in this table: after the table's start, with no table header between.)
            let caused = blanked.iter().any(|(k, at)| {
                k == key
                    && span.start <= at.start
                    && !out.text[span.end.min(at.start)..at.start]
                        .lines()
                        .any(|l| l.trim_start().starts_with('['))
            });
            if !caused {
                ce.span = Some(out.map_span(span.clone()));
                out.errors.push(ce);
            }
            out.faithful = false;
            // Go on without the table (and its sub-tables), if it is a whole `[table]`.
            match blank_table(&out.text, &span) {
                Some(text) => {
                    out.text = text;
                    continue;
                }
                None => break,
            }
        } else {
            out.faithful = false;
            blank(&out.text, &span).map(|text| (text, key_at(&out.text, &span)))
        };
        ce.span = Some(out.map_span(span));
        out.errors.push(ce);
        let Some((text, key)) = patched else {
            out.faithful = false;
            break;
        };
        if let Some(k) = key {
            blanked.push(k);
        }
        out.text = text;
    }
    Ok(out)
}

/// The valid key closest to `key`, if close enough to be a typo (edit distance at most 1
/// for short keys, 2 from 5 characters on, 3 from 10 on; transpositions count 1).
pub(super) fn did_you_mean<'v, S: AsRef<str>>(key: &str, valid: &'v [S]) -> Option<&'v str> {
    let limit = match key.chars().count() {
        0..=4 => 1,
        5..=9 => 2,
        _ => 3,
    };
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(key, v.as_ref()), v.as_ref()))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Renames the key at `span` to `to`, if the text stays valid TOML (the suggested key may
/// be there already).
fn rename(out: &mut Recovered, span: Range<usize>, to: &str) -> Option<String> {
    let text = &out.text;
    let mut new = String::with_capacity(text.len() + to.len());
    new.push_str(text.get(..span.start)?);
    new.push_str(to);
    new.push_str(text.get(span.end..)?);
    new.parse::<toml::Table>().ok()?;
    out.renames.push(Rename {
        at: span.start,
        old_len: span.len(),
        new_len: to.len(),
    });
    Some(new)
}

/// One `key = value` of a document: the key's span, the end of the value, whether it is in
/// an inline table.
struct Entry {
    name: String,
    key: Range<usize>,
    end: usize,
    inline: bool,
}

fn entries(text: &str) -> Vec<Entry> {
    fn table(t: &toml_edit::Table, out: &mut Vec<Entry>) {
        for (name, _) in t {
            let Some((key, item)) = t.get_key_value(name) else {
                continue;
            };
            match item {
                Item::Value(v) => {
                    if let (Some(k), Some(vs)) = (key.span(), v.span()) {
                        out.push(Entry {
                            name: name.to_owned(),
                            key: k,
                            end: vs.end,
                            inline: false,
                        });
                    }
                    value(v, out);
                }
                Item::Table(t) => table(t, out),
                Item::ArrayOfTables(a) => a.iter().for_each(|t| table(t, out)),
                Item::None => {}
            }
        }
    }
    fn value(v: &Value, out: &mut Vec<Entry>) {
        match v {
            Value::InlineTable(t) => {
                for (name, _) in t {
                    let Some((key, Item::Value(v))) = t.get_key_value(name) else {
                        continue;
                    };
                    if let (Some(k), Some(vs)) = (key.span(), v.span()) {
                        out.push(Entry {
                            name: name.to_owned(),
                            key: k,
                            end: vs.end,
                            inline: true,
                        });
                    }
                    value(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| value(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(doc) = ImDocument::parse(text) {
        table(doc.as_table(), &mut out);
    }
    out
}

/// The innermost `key = value` holding `span`.
fn entry_at(text: &str, span: &Range<usize>) -> Option<Entry> {
    entries(text)
        .into_iter()
        .filter(|e| e.key.start <= span.start && span.end <= e.end.max(e.key.end))
        .min_by_key(|e| e.end - e.key.start)
}

/// The name and key span of the `key = value` holding `span`.
fn key_at(text: &str, span: &Range<usize>) -> Option<(String, Range<usize>)> {
    entry_at(text, span).map(|e| (e.name, e.key))
}

/// `text` with the `key = value` holding `span` replaced by spaces (newlines kept, so every
/// offset and line stays), if the result is valid TOML.
fn blank(text: &str, span: &Range<usize>) -> Option<String> {
    let e = entry_at(text, span)?;
    let (mut start, mut end) = (e.key.start, e.end);
    if e.inline {
        // Take a separating comma along: after the value, else before the key.
        let after = &text[end..];
        let gap = after.len() - after.trim_start_matches([' ', '\t']).len();
        if after[gap..].starts_with(',') {
            end += gap + 1;
        } else {
            let before = text[..start].trim_end_matches([' ', '\t']);
            if before.ends_with(',') {
                start = before.len() - 1;
            }
        }
    }
    let new = spaced(text, start..end);
    new.parse::<toml::Table>().ok().map(|_| new)
}

/// `text` with the bytes of `range` replaced by spaces, newlines kept (so every offset and
/// line stays).
fn spaced(text: &str, range: Range<usize>) -> String {
    let mut new = String::with_capacity(text.len());
    new.push_str(&text[..range.start]);
    for ch in text[range.clone()].chars() {
        if ch == '\n' {
            new.push('\n');
        } else {
            new.extend(std::iter::repeat_n(' ', ch.len_utf8()));
        }
    }
    new.push_str(&text[range.end..]);
    new
}

/// `text` with the `[table]` or `[[table]]` starting at `span` blanked, with its
/// sub-tables (whose headers extend its name), if the result is valid TOML.
fn blank_table(text: &str, span: &Range<usize>) -> Option<String> {
    let from = span.start;
    let rest = text.get(from..)?;
    let header = rest.lines().next()?.trim();
    let name = header
        .strip_prefix("[[")
        .and_then(|h| h.split_once("]]"))
        .or_else(|| header.strip_prefix('[').and_then(|h| h.split_once(']')))?
        .0
        .trim();
    // The end: the next header that is not this table's sub-table.
    let mut end = text.len();
    let mut pos = from + rest.find('\n').map_or(rest.len(), |i| i + 1);
    while pos < text.len() {
        let line = &text[pos..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let t = line.trim_start();
        if t.starts_with('[') {
            let inner = t.trim_start_matches('[').trim_start();
            let sub = inner
                .strip_prefix(name)
                .is_some_and(|after| after.trim_start().starts_with('.'));
            if !sub {
                end = pos;
                break;
            }
        }
        pos += line.len() + 1;
    }
    let new = spaced(text, from..end);
    (new != text && new.parse::<toml::Table>().is_ok()).then_some(new)
}

/// One step of a path to a key or value: a key of a table, or an index of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStep<'a> {
    /// A key of a table (or inline table).
    Key(&'a str),
    /// An element of an array (or array of tables).
    Index(usize),
}

/// The span of the value at `path` in `text` (e.g. `[Key("admin"), Key("token_file")]`),
/// for errors found after parsing (the files a config names).
pub fn locate(text: &str, path: &[PathStep<'_>]) -> Option<Range<usize>> {
    let doc = ImDocument::parse(text).ok()?;
    let mut table: &toml_edit::Table = doc.as_table();
    let mut i = 0;
    while i < path.len() {
        let PathStep::Key(k) = path[i] else {
            return None;
        };
        i += 1;
        match table.get(k)? {
            Item::Table(t) => table = t,
            Item::ArrayOfTables(a) => {
                let PathStep::Index(n) = *path.get(i)? else {
                    return None;
                };
                i += 1;
                table = a.get(n)?;
            }
            Item::Value(v) => return locate_value(v, &path[i..]),
            Item::None => return None,
        }
    }
    table.span()
}

fn locate_value(v: &Value, path: &[PathStep<'_>]) -> Option<Range<usize>> {
    let mut v = v;
    for step in path {
        v = match (v, step) {
            (Value::InlineTable(t), PathStep::Key(k)) => t.get(k)?,
            (Value::Array(a), PathStep::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    v.span()
}
