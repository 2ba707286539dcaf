//! What fuzzing found in the HTTP/1.1 codec (docs/fuzzing.md), end to end: the real
//! `fulcrum` binary, a raw TCP backend in this process that answers every request with a
//! canned response, raw TCP clients. Only 127.0.0.0/8.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{admin_toml, free_addr, weighted, Fulcrum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that reads a request head and answers `answer`, then closes; counts requests.
async fn raw_backend(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

async fn start(name: &str, backend: SocketAddr) -> (Fulcrum, SocketAddr) {
    let admin = free_addr();
    let listen = free_addr();
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        common::service_toml("web", listen, "http", "p", ""),
        common::pool_toml("p", "rr", "", &weighted(&[backend])),
    );
    let f = Fulcrum::start(name, admin, &cfg, &["--workers", "1"]).await;
    (f, listen)
}

/// Sends `req` and reads the whole answer (the connection is closed after it), within 5 s.
async fn exchange(listen: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reason_phrase_not_utf8_is_relayed_without_it() {
    // Found by the h1_response target: this status line panicked the codec.
    let (b, _) =
        raw_backend(b"HTTP/1.1 200 OK\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    let (_f, listen) = start("fuzz-reason", b).await;
    let got = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(got.ends_with("\r\n\r\nok"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_transfer_encoding_framing_is_refused() {
    // Found by the h1_differential target: framings an RFC 9112 parser refuses, which
    // other parsers read differently (request smuggling); each is a 400 now, and nothing
    // reaches the backend.
    let (b, hits) =
        raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (_f, listen) = start("fuzz-te", b).await;
    for req in [
        // HTTP/1.0 has no Transfer-Encoding (6.1: faulty framing)
        &b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        // a quoted parameter hiding a comma: the final coding is `x` for a parser of quotes
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x;p=\", chunked\r\n\r\n0\r\n\r\n",
        // a coding that is not a token
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunt: a, chunked\r\n\r\n0\r\n\r\n",
        // a bare LF in the trailer section: a lenient parser ends the body earlier
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n\r\n",
    ] {
        let got = exchange(listen, req).await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "{:?}: {got:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "a refused request reached the backend"
    );
    // The same with valid framing is forwarded.
    let got = exchange(
        listen,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\nX: a\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
}
