//! The one admin API client of the command line (`ctl`, `adm`, `announce`): HTTP/1.1 on
//! hyper, one connection per request, from synchronous code (each client runs its own
//! single-threaded tokio runtime). Callers word the failures in their own vocabulary.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where an admin API listens: `http://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given (without a trailing `/`), for messages.
    pub url: String,
    /// `HOST[:PORT]` as given: the `Host` header.
    host: String,
    /// A path prefix put before every request path (a reverse proxy in front); usually empty.
    prefix: String,
    /// The addresses `host` resolved to, tried in order.
    addrs: Vec<SocketAddr>,
}

/// Why an admin URL cannot be used.
#[derive(Debug)]
pub enum UrlError {
    /// Not an `http://` URL.
    NotHttp,
    /// The host does not resolve.
    Resolve(String, io::Error),
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PREFIX]` (port 80 when none is given) and resolves HOST.
    ///
    /// # Errors
    /// See [`UrlError`].
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let url = url.trim_end_matches('/').to_owned();
        let rest = url.strip_prefix("http://").ok_or(UrlError::NotHttp)?;
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, String::new()),
        };
        let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty()
                && p.bytes().all(|c| c.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        });
        let with_port = if has_port {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| UrlError::Resolve(host.to_owned(), e))?
            .collect();
        if addrs.is_empty() {
            let none = io::Error::new(io::ErrorKind::NotFound, "no address");
            return Err(UrlError::Resolve(host.to_owned(), none));
        }
        Ok(Self {
            host: host.to_owned(),
            prefix,
            addrs,
            url,
        })
    }

    /// One known address.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            url: format!("http://{addr}"),
            host: addr.to_string(),
            prefix: String::new(),
            addrs: vec![addr],
        }
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Error {
    /// No connection, or it broke or timed out (`ConnectionRefused`, `TimedOut`, ...).
    Unreachable(io::Error),
    /// The answer is not HTTP, or larger than the client takes.
    Malformed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "{e}"),
            Self::Malformed(why) => write!(f, "a malformed HTTP answer ({why})"),
        }
    }
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// See the module docs.
pub struct Client {
    pub endpoint: Endpoint,
    token: Option<String>,
    user_agent: &'static str,
    connect_timeout: Duration,
    /// For the whole exchange after the connection is made.
    timeout: Duration,
    max_body: usize,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of `endpoint`, sending `token` as a bearer token when there is one.
    ///
    /// # Errors
    /// The runtime cannot be built (no threads or file descriptors left).
    pub fn new(
        endpoint: Endpoint,
        token: Option<String>,
        user_agent: &'static str,
    ) -> io::Result<Self> {
        Ok(Self {
            endpoint,
            token,
            user_agent,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
            max_body: 64 << 20,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Sets the connect timeout and the timeout of the rest of the exchange.
    #[must_use]
    pub fn timeouts(mut self, connect: Duration, exchange: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = exchange;
        self
    }

    /// Sets the largest body taken (a larger one is [`Error::Malformed`]).
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// One request (`body` sent as JSON); any status is an answer.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, Error> {
        self.rt.block_on(self.exchange(method, path, body))
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Error> {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.prefix))
            .header(HOST, &self.endpoint.host)
            .header(USER_AGENT, self.user_agent)
            .header(ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Malformed(format!("cannot build the request: {e}")))?;
        let answer = tokio::time::timeout(self.timeout, async {
            let resp = sender.send_request(req).await.map_err(transport)?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => transport(*e),
                    Err(e) => Error::Malformed(e.to_string()),
                })?
                .to_bytes();
            Ok(Answer { status, body })
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        conn.abort();
        answer
    }

    /// A connection to the first address that takes one.
    async fn connect(&self) -> Result<tokio::net::TcpStream, Error> {
        let mut last = None;
        for a in &self.endpoint.addrs {
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(a))
                .await
            {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = Some(Error::Unreachable(e)),
                Err(_) => last = Some(timed_out()),
            }
        }
        Err(last.unwrap_or_else(|| Error::Unreachable(io::Error::other("no address"))))
    }
}

fn timed_out() -> Error {
    Error::Unreachable(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
}

fn transport(e: hyper::Error) -> Error {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        Error::Malformed(e.to_string())
    } else {
        Error::Unreachable(io::Error::other(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:9090/").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((e.host.as_str(), e.prefix.as_str()), ("127.0.0.1:9090", ""));
        assert_eq!(e.url, "http://127.0.0.1:9090");
        let e = Endpoint::parse("http://[::1]:9/lb").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            e.addrs,
            ["[::1]:9".parse().unwrap_or_else(|_| unreachable!())]
        );
        assert_eq!(e.prefix, "/lb");
        let e = Endpoint::parse("http://127.0.0.1").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(e.addrs[0].port(), 80);
        assert!(matches!(
            Endpoint::parse("https://x:1"),
            Err(UrlError::NotHttp)
        ));
    }

    /// A real server that answers chunked, and one that answers garbage.
    #[test]
    fn chunked_and_malformed_answers() {
        let serve = |answer: &'static [u8]| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                if let Ok((mut s, _)) = l.accept() {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(answer);
                }
            });
            addr
        };
        let ok = serve(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"e\r\n2\r\n\"}\r\n0\r\n\r\n");
        let c = Client::new(Endpoint::at(ok), None, "test").unwrap_or_else(|e| panic!("{e}"));
        let a = c.call("GET", "/x", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.status, a.text().as_str()), (404, "{\"e\"}"));
        let bad = serve(b"SSH-2.0-OpenSSH\r\n\r\n");
        let c = Client::new(Endpoint::at(bad), None, "test").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            c.call("GET", "/x", None),
            Err(Error::Malformed(_))
        ));
    }
}
