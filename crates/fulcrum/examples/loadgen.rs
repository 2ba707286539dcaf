//! An open-loop HTTP/1.1 load generator for `bench/saturation.py` (wrk2's model).
//!
//! `loadgen ADDR PATH RATE SECONDS CONNS` sends `GET PATH` over `CONNS` keep-alive
//! connections at `RATE` requests per second in total for `SECONDS`, and prints one JSON line:
//! requests answered, errors, the achieved rate and the response-time percentiles.
//!
//! Each connection has its own schedule (connection `k` of `n` sends request `i` at `start +
//! (i * n + k) / RATE`), and a response time is measured from the *intended* send time, so a
//! request that waits behind a slow one is charged the wait (coordinated omission is
//! corrected). When the server cannot keep up, the schedule runs ahead and response times
//! grow, as they do for real clients. Answers must carry `Content-Length` (the benchmark's
//! nginx backend serves a static page). Why not wrk2 or h2load: wrk2 is not packaged by
//! Debian, and h2load's `--rps` measures from the actual send time and reports no
//! percentiles.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    path: String,
    rate: f64,
    seconds: f64,
    conns: u32,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, rate, seconds, conns] = a.as_slice() else {
        return Err(
            "usage: loadgen ADDR PATH RATE SECONDS CONNS (e.g. 127.0.0.1:8080 / 20000 10 64)"
                .into(),
        );
    };
    let num = |s: &str, what: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && v.is_finite())
            .ok_or(format!("{what} {s:?} is not a positive number"))
    };
    Ok(Args {
        addr: addr
            .parse()
            .map_err(|e| format!("ADDR {addr:?}: {e} (valid: IP:PORT)"))?,
        path: path.clone(),
        rate: num(rate, "RATE")?,
        seconds: num(seconds, "SECONDS")?,
        conns: conns
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or(format!("CONNS {conns:?} is not a positive integer"))?,
    })
}

/// What one connection saw: response times in µs, errors.
#[derive(Default)]
struct Seen {
    times: Vec<u32>,
    errors: u64,
}

/// Reads one answer (head, then `Content-Length` bytes of body); `buf` keeps what follows.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .ok_or_else(|| bad("an answer without Content-Length"))?;
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(s, buf).await?;
            }
            buf.drain(..total);
            return Ok(());
        }
        read_more(s, buf).await?;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(16384);
    if s.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn connection(a: &Args, k: u32, start: Instant, end: Instant) -> Seen {
    let mut seen = Seen::default();
    let req = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", a.path).into_bytes();
    let step = Duration::from_secs_f64(f64::from(a.conns) / a.rate);
    let mut next = start + Duration::from_secs_f64(f64::from(k) / a.rate);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        if conn.is_none() {
            conn = TcpStream::connect(a.addr).await.ok();
            buf.clear();
        }
        let ok = match conn.as_mut() {
            Some(s) => s.write_all(&req).await.is_ok() && answer(s, &mut buf).await.is_ok(),
            None => false,
        };
        if ok {
            let t = next.elapsed().as_micros();
            seen.times.push(u32::try_from(t).unwrap_or(u32::MAX));
        } else {
            seen.errors += 1;
            conn = None;
            // Not a tight loop against a refusing server: the next one on the schedule.
        }
        next += step;
    }
    seen
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() -> std::process::ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let a = std::rc::Rc::new(a);
    let started = Instant::now();
    let seen = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let start = Instant::now() + Duration::from_millis(50);
                let end = start + Duration::from_secs_f64(a.seconds);
                let tasks: Vec<_> = (0..a.conns)
                    .map(|k| {
                        let a = std::rc::Rc::clone(&a);
                        tokio::task::spawn_local(async move { connection(&a, k, start, end).await })
                    })
                    .collect();
                let mut all = Seen::default();
                for t in tasks {
                    if let Ok(s) = t.await {
                        all.times.extend(s.times);
                        all.errors += s.errors;
                    }
                }
                all
            })
            .await
    });
    let took = started.elapsed().as_secs_f64();
    let mut times = seen.times;
    times.sort_unstable();
    println!(
        "{{\"offered_rate\": {:.0}, \"answered\": {}, \"errors\": {}, \"achieved_rate\": {:.0}, \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
        a.rate,
        times.len(),
        seen.errors,
        times.len() as f64 / took.max(a.seconds),
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times.last().copied().unwrap_or(0),
    );
    std::process::ExitCode::SUCCESS
}
