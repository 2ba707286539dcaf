//! A request head as every part of the proxy reads it, whatever the client's protocol: the
//! HTTP/1.1 head ([`crate::server`]), the HTTP/2 one ([`crate::h2`]), or either as the rules
//! rewrite it ([`crate::rules::Ruled`]).

use http::Version;

/// A request head as the shared logic reads it.
pub(crate) trait ReqView {
    fn method(&self) -> &[u8];
    /// The origin-form target (path and query).
    fn target(&self) -> &[u8];
    /// The URI authority (HTTP/2, absolute-form HTTP/1.1).
    fn authority(&self) -> Option<&[u8]>;
    fn version(&self) -> Version;
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_;
    /// The head's size in bytes: as received (HTTP/1.1), or as HTTP/1.1 text would be
    /// (HTTP/2: the HPACK-compressed size is not seen; request line and `name: value` lines).
    fn head_len(&self) -> u64 {
        let line = self.method().len() + self.target().len() + 12; // " " " HTTP/1.1\r\n"
        let fields: usize = self.headers().map(|(n, v)| n.len() + v.len() + 4).sum();
        (line + fields + 2) as u64
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}
