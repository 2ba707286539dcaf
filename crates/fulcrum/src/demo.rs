//! `fulcrum demo`: a self-contained tour. Three demo backends on loopback answer with their
//! own name; an HTTP service on 127.0.0.1:8080 balances them; the admin API listens on
//! 127.0.0.1:9090. No file and no root needed; Ctrl-C exits 0.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use fulcrum_core::config;
use fulcrum_state::snapshot::RelayMode;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::run::{self, LogFormat};

/// The service address the contract fixes for the demo.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// The admin address the contract fixes for the demo.
pub const DEMO_ADMIN: &str = "127.0.0.1:9090";

/// Arguments of `fulcrum demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Data-path threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// The demo's configuration for three backends.
pub fn demo_config(backends: &[SocketAddr]) -> String {
    let mut b = String::new();
    for a in backends {
        let _ = writeln!(b, "[[pool.backend]]\naddress = \"{a}\"\n");
    }
    format!(
        r#"[admin]
listen = "{DEMO_ADMIN}"

[[service]]
name = "demo"
listen = "{DEMO_LISTEN}"
protocol = "http"
pool = "demo"
drain_timeout = "1s"

[[service.route]]
path_prefix = "/sticky"
pool = "sticky"

[service.access_log]
format = "combined"
path = "-"

[[pool]]
name = "demo"
scheduler = "rr"

[pool.health]
check = "http"
interval = "1s"
timeout = "500ms"
path = "/healthz"

{b}
[[pool]]
name = "sticky"
scheduler = "wrr"
sticky_cookie = "FULCRUM_SRV"

{b}"#
    )
}

async fn backend(name: String, listener: tokio::net::TcpListener) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = format!(
                    "hello from {name} ({} {})\n",
                    req.method(),
                    req.uri().path()
                );
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain")
                            .header("x-demo-backend", "1")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

fn tour(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("backend-{} on {a}", i + 1))
        .collect();
    format!(
        "\
Fulcrum demo: three demo backends ({}),
an HTTP load balancer on http://{DEMO_LISTEN} and the admin API on http://{DEMO_ADMIN}.
Open http://{DEMO_ADMIN}/ in a browser for the live dashboard.

Try, in another terminal:
  for i in 1 2 3 4 5 6; do curl -s http://{DEMO_LISTEN}/; done     # round robin over the three
  curl -si http://{DEMO_LISTEN}/sticky | grep -i set-cookie           # a sticky cookie...
  curl -s -b FULCRUM_SRV=<value> http://{DEMO_LISTEN}/sticky          # ...keeps you on one backend
  curl -s --http2-prior-knowledge http://{DEMO_LISTEN}/               # HTTP/2 (h2c)
  curl -s http://{DEMO_ADMIN}/api/v1/pools/demo                       # backends and their state
  curl -s http://{DEMO_ADMIN}/metrics | grep fulcrum_http_            # request metrics

Access log lines follow below. Ctrl-C to stop.
",
        list.join(", ")
    )
}

/// Runs the demo until Ctrl-C (exit code 0).
pub fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    run::init_logging(LogFormat::Text);
    for addr in [DEMO_LISTEN, DEMO_ADMIN] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            eprintln!("fulcrum demo: cannot listen on {addr}: {e} (is another demo running?)");
            return Ok(1);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fulcrum-control")
        .build()
        .context("cannot start the control runtime")?;
    // A LocalSet: with one worker, the worker runs on this thread (`fulcrum_proxy::worker::start_inline`).
    tokio::task::LocalSet::new().block_on(&rt, async {
        let mut addrs = Vec::new();
        for i in 1..=3 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot start a demo backend")?;
            addrs.push(l.local_addr()?);
            tokio::spawn(backend(format!("backend-{i}"), l));
        }
        let text = demo_config(&addrs);
        let cfg =
            config::parse(&text).map_err(|e| anyhow::anyhow!("{}", e.render("<demo>", &text)))?;
        println!("{}", tour(&addrs));
        run::serve(
            PathBuf::from("<demo config, in memory>"),
            cfg,
            args.workers.max(1),
            RelayMode::Auto,
            run::Lifecycle::default(),
        )
        .await
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_is_valid() {
        let addrs: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            "127.0.0.1:2".parse().unwrap_or_else(|_| unreachable!()),
            "127.0.0.1:3".parse().unwrap_or_else(|_| unreachable!()),
        ];
        let text = super::demo_config(&addrs);
        assert!(fulcrum_core::config::parse(&text).is_ok(), "{text}");
    }
}
