//! The JSON lines of the connection and access logs (`format = "json"`): one object per
//! line, with the keys of the service's `fields` in order. Written by [`crate::connlog`]
//! (tcp, udp) and `fulcrum_http::accesslog` (http), which say what each key's value is.
//!
//! The layout is written here and the strings are escaped by `serde_json`: a derived
//! `Serialize` would print `duration_ms` as the shortest float (1.5), not with the fixed
//! three decimals (1.500) the format documents.

use std::fmt::Display;
use std::io::Write as _;
use std::time::Duration;

use fulcrum_core::config::LogField;

/// Where the value of one key is written (writing to a `Vec` cannot fail).
pub struct Value<'a>(&'a mut Vec<u8>);

impl Value<'_> {
    /// A JSON string, escaped.
    pub fn str(self, v: &str) {
        let _ = serde_json::to_writer(&mut *self.0, v);
    }

    /// A JSON string of text that needs no escaping: addresses, times, fixed names.
    pub fn plain(self, v: impl Display) {
        let _ = write!(self.0, "\"{v}\"");
    }

    /// [`Self::plain`], or `null` for `None`.
    pub fn plain_or_null(self, v: Option<impl Display>) {
        match v {
            Some(v) => self.plain(v),
            None => self.null(),
        }
    }

    /// A JSON number.
    pub fn number(self, v: impl Display) {
        let _ = write!(self.0, "{v}");
    }

    /// A duration in milliseconds, with three decimals.
    pub fn ms(self, d: Duration) {
        let _ = write!(self.0, "{:.3}", d.as_secs_f64() * 1000.0);
    }

    /// `null`: a key this kind of service has no value for.
    pub fn null(self) {
        self.0.extend_from_slice(b"null");
    }
}

/// One line, `{"KEY":VALUE,...}` and a newline, with the keys of `fields` in order; `value`
/// writes the value of each. `capacity`: the usual length of a line.
pub fn line(
    fields: &[LogField],
    capacity: usize,
    mut value: impl FnMut(LogField, Value<'_>),
) -> Vec<u8> {
    let mut s = Vec::with_capacity(capacity);
    s.push(b'{');
    for (i, &f) in fields.iter().enumerate() {
        if i > 0 {
            s.push(b',');
        }
        let _ = write!(s, "\"{}\":", f.as_str());
        value(f, Value(&mut s));
    }
    s.extend_from_slice(b"}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_escapes() {
        let line = line(
            &[LogField::Service, LogField::Backend, LogField::DurationMs],
            16,
            |f, v| match f {
                LogField::Service => v.str("a\"b\\c\n\u{1}é"),
                LogField::DurationMs => v.ms(Duration::from_micros(1500)),
                _ => v.plain_or_null(None::<u8>),
            },
        );
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"service\":\"a\\\"b\\\\c\\n\\u0001é\",\"backend\":null,\"duration_ms\":1.500}\n"
        );
    }
}
