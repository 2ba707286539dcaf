//! HTTP-DNS at `/dns-query`, sans IO: an HTTP request's method, query string, content type,
//! `Accept` and body in, the HTTP answer out. The admin listener and every http service
//! with `dns_service` call [`serve`] (docs/dns.md), passing the one DNS answerer
//! ([`crate::dns::answer`] through the caller's snapshot), so both speak alike and answer
//! what the dns service answers over UDP:
//! - `GET ?name=&type=`: the JSON API (the Google and Cloudflare shape,
//!   [`crate::dns::http::json`]), `application/dns-json` when the client asks for it, else
//!   `application/json`;
//! - RFC 8484: `GET ?dns=<base64url>` and `POST` with `application/dns-message`: the reply
//!   message with `Cache-Control: max-age=<smallest TTL>` (RFC 8484 5.1);
//! - errors: a JSON body `{"error": "..."}` saying what was wrong and what would be valid.

use serde_json::json;

use crate::dns::http as dnshttp;

/// The path HTTP-DNS is served at (RFC 8484's example, what `kdig +https` asks by default).
pub const PATH: &str = "/dns-query";
/// RFC 8484's media type.
pub const DNS_MESSAGE: &str = "application/dns-message";
/// The largest DNS message (a POST body beyond it is refused with 413).
pub const MAX_MESSAGE: usize = 65_535;

/// An HTTP request to [`PATH`], as [`serve`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST` (others: 405).
    pub method: &'a [u8],
    /// The query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
    /// The body (POST).
    pub body: &'a [u8],
}

/// The HTTP answer to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Cache-Control: max-age=` (RFC 8484 answers).
    pub max_age: Option<u32>,
    /// `Allow` (405 answers).
    pub allow: Option<&'static str>,
}

impl Answer {
    /// An error answer: `{"error": msg}`.
    pub fn error(status: u16, msg: &str) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: json!({ "error": msg }).to_string().into_bytes(),
            max_age: None,
            allow: None,
        }
    }
}

/// The value of query parameter `key` (percent-decoded), if present.
pub fn param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Answers one HTTP-DNS request. `answer` gives the dns service's reply to a query message
/// (`None`: the message was dropped: not a query).
pub fn serve(req: &Request<'_>, answer: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Answer {
    match req.method {
        b"GET" => get(req, answer),
        b"POST" => post(req, answer),
        other => Answer {
            allow: Some("GET, POST"),
            ..Answer::error(
                405,
                &format!(
                    "method {} is not served at {PATH}: GET (name= and type=, or dns=) or POST ({DNS_MESSAGE})",
                    String::from_utf8_lossy(other)
                ),
            )
        },
    }
}

fn message(reply: Option<Vec<u8>>) -> Answer {
    let Some(reply) = reply else {
        return Answer::error(400, "not a DNS query");
    };
    Answer {
        status: 200,
        content_type: DNS_MESSAGE,
        max_age: Some(dnshttp::min_ttl(&reply).unwrap_or(0)),
        body: reply,
        allow: None,
    }
}

fn get(req: &Request<'_>, answer: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Answer {
    if let Some(d) = param(req.query, "dns") {
        let Some(packet) = dnshttp::base64url(&d) else {
            return Answer::error(400, "dns is not base64url (RFC 8484 4.1)");
        };
        return message(answer(&packet));
    }
    let Some(name) = param(req.query, "name") else {
        return Answer::error(400, "give name= (and type=) for JSON, or dns= (RFC 8484)");
    };
    let packet = match dnshttp::query(&name, param(req.query, "type").as_deref()) {
        Ok(p) => p,
        Err(e) => return Answer::error(400, &e),
    };
    let Some(json) = answer(&packet).and_then(|r| dnshttp::json(&r)) else {
        return Answer::error(500, "no answer");
    };
    let wants_dns_json = req
        .accept
        .is_some_and(|v| v.windows(20).any(|w| w == b"application/dns-json"));
    Answer {
        status: 200,
        content_type: if wants_dns_json {
            "application/dns-json"
        } else {
            "application/json"
        },
        body: json.to_string().into_bytes(),
        max_age: None,
        allow: None,
    }
}

fn post(req: &Request<'_>, answer: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Answer {
    let ct = req.content_type.unwrap_or(b"");
    if ct != DNS_MESSAGE.as_bytes() {
        return Answer::error(
            415,
            &format!(
                "content-type {:?}; RFC 8484 POST takes {DNS_MESSAGE}",
                String::from_utf8_lossy(ct)
            ),
        );
    }
    if req.body.len() > MAX_MESSAGE {
        return Answer::error(
            413,
            &format!(
                "a {}-byte body; a DNS message is at most {MAX_MESSAGE} bytes",
                req.body.len()
            ),
        );
    }
    message(answer(req.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a [u8], query: Option<&'a str>) -> Request<'a> {
        Request {
            method,
            query,
            content_type: None,
            accept: None,
            body: b"",
        }
    }

    #[test]
    fn routes_by_method_and_parameters() {
        let echo = |p: &[u8]| Some(p.to_vec());
        // RFC 8484 GET: the decoded message reaches the answerer, the reply is the body.
        let a = serve(&req(b"GET", Some("dns=AAABAA")), echo);
        assert_eq!((a.status, a.content_type), (200, DNS_MESSAGE));
        assert_eq!(a.body, vec![0, 0, 1, 0]);
        let a = serve(&req(b"GET", Some("dns=%%%")), echo);
        assert_eq!(a.status, 400);
        let a = serve(&req(b"GET", None), echo);
        assert_eq!(a.status, 400);
        let a = serve(&req(b"GET", Some("name=www.example.test&type=BOGUS")), echo);
        assert_eq!(a.status, 400);
        assert!(String::from_utf8_lossy(&a.body).contains("BOGUS"));
        let a = serve(&req(b"PUT", Some("dns=AAABAA")), echo);
        assert_eq!((a.status, a.allow), (405, Some("GET, POST")));
        // POST: only application/dns-message.
        let mut r = req(b"POST", None);
        r.body = b"\x00\x01";
        assert_eq!(serve(&r, echo).status, 415);
        r.content_type = Some(DNS_MESSAGE.as_bytes());
        let a = serve(&r, echo);
        assert_eq!((a.status, a.body.as_slice()), (200, &b"\x00\x01"[..]));
        // A dropped query is a 400.
        assert_eq!(serve(&r, |_| None).status, 400);
        assert_eq!(
            param(Some("name=a%2Eb&x=1"), "name").as_deref(),
            Some("a.b")
        );
    }
}
