//! Per-connection budgets on the frames an HTTP/2 client sends, which the `h2` crate's server
//! does not limit by rate: `RST_STREAM` (rapid reset, CVE-2023-44487) and `SETTINGS`, `PING` and
//! `PRIORITY` (floods that each cost an answer or work but carry no request). The client's
//! bytes are read through [`Guarded`], which follows the frame headers (nine bytes each; the
//! payloads are skipped, not copied) and ends the connection with an error once a budget of
//! `[service.http2]` is spent within a second. The counting is [`FrameMeter`], without IO or
//! clock.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 3.4), before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Frames of each counted kind seen in some bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub resets: u32,
    pub control: u32,
}

/// Which budget a client overspent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flood {
    Resets,
    Control,
}

impl Flood {
    fn what(self) -> &'static str {
        match self {
            Self::Resets => "RST_STREAM frames over [service.http2] max_resets_per_second",
            Self::Control => {
                "SETTINGS/PING/PRIORITY frames over [service.http2] max_control_frames_per_second"
            }
        }
    }
}

/// Follows a client's frame stream and counts frames per one-second window.
#[derive(Debug)]
pub(crate) struct FrameMeter {
    /// Preface bytes still to skip.
    preface: usize,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
    max_resets: u32,
    max_control: u32,
    window: Option<Instant>,
    resets: u32,
    control: u32,
}

impl FrameMeter {
    pub fn new(max_resets_per_second: u32, max_control_frames_per_second: u32) -> Self {
        Self {
            preface: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload: 0,
            max_resets: max_resets_per_second,
            max_control: max_control_frames_per_second,
            window: None,
            resets: 0,
            control: 0,
        }
    }

    /// Follows `bytes` (the next bytes from the client) and returns the counted frames whose
    /// header they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == FRAME_HEADER_LEN {
                    self.head_len = 0;
                    let h = &self.head;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    match kind {
                        RST_STREAM => seen.resets += 1,
                        SETTINGS | PING if flags & ACK == 0 => seen.control += 1,
                        PRIORITY => seen.control += 1,
                        _ => {}
                    }
                }
            }
        }
        seen
    }

    /// Adds `seen` to the window of `now` (windows are one second long, the first starting
    /// at the first counted frame); a budget overspent in it is a flood.
    pub fn charge(&mut self, seen: Seen, now: Instant) -> Result<(), Flood> {
        if seen == Seen::default() {
            return Ok(());
        }
        match self.window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.resets = 0;
                self.control = 0;
            }
        }
        self.resets = self.resets.saturating_add(seen.resets);
        self.control = self.control.saturating_add(seen.control);
        if self.resets > self.max_resets {
            Err(Flood::Resets)
        } else if self.control > self.max_control {
            Err(Flood::Control)
        } else {
            Ok(())
        }
    }
}

/// A client connection whose reads go through a [`FrameMeter`]: once a budget is overspent,
/// reads fail and the HTTP/2 connection ends (its socket is closed). Bytes read from the
/// connection before it was known to be HTTP/2 (`prefix`) are read first, metered alike.
pub(crate) struct Guarded<S> {
    io: S,
    /// Read from `at` on, then freed.
    prefix: Vec<u8>,
    at: usize,
    meter: FrameMeter,
    flooded: Option<Flood>,
}

impl<S> Guarded<S> {
    pub fn new(io: S, prefix: Vec<u8>, meter: FrameMeter) -> Self {
        Self {
            io,
            prefix,
            at: 0,
            meter,
            flooded: None,
        }
    }

    /// Moves what `buf` takes of the prefix's unread bytes into it.
    fn read_prefix(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.prefix.len() - self.at).min(buf.remaining());
        buf.put_slice(&self.prefix[self.at..self.at + n]);
        self.at += n;
        if self.at == self.prefix.len() {
            self.prefix = Vec::new();
            self.at = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(f) = this.flooded {
            return Poll::Ready(Err(io::Error::other(f.what())));
        }
        let before = buf.filled().len();
        let r = if this.at < this.prefix.len() {
            this.read_prefix(buf);
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.io).poll_read(cx, buf)
        };
        if let Poll::Ready(Ok(())) = r {
            let seen = this.meter.feed(&buf.filled()[before..]);
            if let Err(f) = this.meter.charge(seen, Instant::now()) {
                tracing::debug!(flood = f.what(), "http/2 connection closed");
                this.flooded = Some(f);
                return Poll::Ready(Err(io::Error::other(f.what())));
            }
        }
        r
    }
}

/// Writes go straight to the connection.
impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_frames_split_anywhere_and_skips_payloads() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        // a HEADERS payload that looks like frame headers is skipped
        bytes.extend(frame(0x1, 0x4, 1, &frame(RST_STREAM, 0, 1, &[0; 4])));
        bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        bytes.extend(frame(PING, 0, 0, &[7; 8]));
        bytes.extend(frame(PING, ACK, 0, &[7; 8]));
        bytes.extend(frame(PRIORITY, 0, 3, &[0; 5]));
        let want = Seen {
            resets: 1,
            control: 3,
        };
        for chunk in [1, 2, 5, 9, 10, 64, bytes.len()] {
            let mut m = FrameMeter::new(10, 10);
            let mut seen = Seen::default();
            for c in bytes.chunks(chunk) {
                let s = m.feed(c);
                seen.resets += s.resets;
                seen.control += s.control;
            }
            assert_eq!(seen, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_budget_is_per_second() {
        let mut m = FrameMeter::new(3, 2);
        let t0 = Instant::now();
        let r = Seen {
            resets: 1,
            control: 0,
        };
        for _ in 0..3 {
            assert_eq!(m.charge(r, t0), Ok(()));
        }
        assert_eq!(
            m.charge(r, t0 + Duration::from_millis(999)),
            Err(Flood::Resets)
        );
        // a new second, a new budget
        let t1 = t0 + Duration::from_millis(1500);
        for _ in 0..3 {
            assert_eq!(m.charge(r, t1), Ok(()));
        }
        let c = Seen {
            resets: 0,
            control: 3,
        };
        assert_eq!(m.charge(c, t1), Err(Flood::Control));
        assert_eq!(m.charge(Seen::default(), t1), Ok(()), "nothing counted");
    }
}
