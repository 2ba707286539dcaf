//! `fulcrum run` with `[announce]`: keeps the BGP speaker in step with what this instance
//! can serve (the core's `should_announce`, read through `fulcrum_state::announce`).
//!
//! - bird: one task, off the data path, talks to bird's control socket. On every change of
//!   the decision, and every [`RESYNC`] to repair after a bird restart, it sends `enable
//!   PREFIX+SERVICE` or `disable PREFIX+SERVICE` for each service (bird answers
//!   idempotently). bird unreachable: logged, retried every [`RETRY`], never fatal.
//! - exabgp: `fulcrum announce` (exabgp's API process) reads the decision from the admin
//!   API; this task only records it as what exabgp is told (`fulcrum_vip_announced`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_core::announce::{bird_command, bird_outcome, parse_bird_line, BirdLine, BirdOutcome};
use fulcrum_core::config::{AnnounceConfig, Speaker};
use fulcrum_state::announce::desired;
use fulcrum_state::snapshot::Shared;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How often the decision is re-read from the snapshot.
const TICK: Duration = Duration::from_millis(100);
/// Every service's state is sent again this often (repairs a restarted bird).
const RESYNC: Duration = Duration::from_secs(3);
/// After bird was unreachable, the next try comes this much later.
const RETRY: Duration = Duration::from_secs(1);
/// One conversation with bird (connect, greeting, every command) must finish within this.
const BIRD_TIMEOUT: Duration = Duration::from_secs(5);

/// The running speaker task; [`SpeakerHandle::flush`] makes it act on the decision now.
pub struct SpeakerHandle {
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl SpeakerHandle {
    /// Asks the task to bring the speaker in step now and waits (at most `limit`) until it
    /// did or gave up trying.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// Starts the speaker task of `cfg` on the current runtime.
pub fn start(cfg: &AnnounceConfig, shared: Arc<Shared>) -> SpeakerHandle {
    shared.announce.set_speaker(cfg.speaker.kind());
    shared.announce.set_delay(cfg.announce_delay);
    let (tx, rx) = mpsc::unbounded_channel();
    match &cfg.speaker {
        Speaker::Bird {
            socket,
            protocol_prefix,
        } => {
            if !socket.exists() {
                tracing::error!(
                    socket = %socket.display(),
                    "[announce] bird control socket {} does not exist (is bird running, and is `socket` its control socket?); VIPs are not announced until it appears; serving anyway and retrying",
                    socket.display()
                );
            }
            tokio::spawn(bird_task(
                Bird {
                    socket: socket.clone(),
                    prefix: protocol_prefix.clone(),
                },
                shared,
                rx,
            ));
        }
        Speaker::Exabgp => {
            tokio::spawn(exabgp_task(shared, rx));
        }
    }
    SpeakerHandle { flush: tx }
}

fn wanted(shared: &Shared) -> BTreeMap<String, bool> {
    desired(shared)
        .into_iter()
        .map(|v| (v.service, v.announce))
        .collect()
}

async fn exabgp_task(shared: Arc<Shared>, mut flush: mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
    loop {
        shared.announce.set_announced(wanted(&shared));
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            f = flush.recv() => match f {
                Some(reply) => {
                    shared.announce.set_announced(wanted(&shared));
                    let _ = reply.send(());
                }
                None => return,
            },
        }
    }
}

struct Bird {
    socket: PathBuf,
    prefix: String,
}

/// What one conversation with bird did to one protocol.
enum Applied {
    /// In the state asked for.
    Done,
    /// bird answered something else (the message says what).
    Failed(String),
}

async fn bird_task(
    bird: Bird,
    shared: Arc<Shared>,
    mut flush: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    // What bird holds, as far as we know: service -> enabled.
    let mut held: BTreeMap<String, bool> = BTreeMap::new();
    let mut last_want: Option<BTreeMap<String, bool>> = None;
    let mut next_sync = Instant::now();
    let mut reachable: Option<bool> = None;
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let want = wanted(&shared);
        // A change is sent at once, unless bird was unreachable: then at the next retry.
        let changed = last_want.as_ref() != Some(&want) && reachable != Some(false);
        let due = changed || Instant::now() >= next_sync;
        if due || !waiting.is_empty() {
            // Services that are gone are disabled once.
            let mut cmds: Vec<(String, bool)> = want.iter().map(|(s, e)| (s.clone(), *e)).collect();
            for s in held.keys() {
                if !want.contains_key(s) {
                    cmds.push((s.clone(), false));
                }
            }
            let result = tokio::time::timeout(BIRD_TIMEOUT, bird.apply(&cmds)).await;
            let result = result
                .unwrap_or_else(|_| Err(format!("no answer within {}s", BIRD_TIMEOUT.as_secs())));
            match result {
                Ok(applied) => {
                    if reachable != Some(true) {
                        tracing::info!(socket = %bird.socket.display(), "[announce] bird reachable");
                    }
                    reachable = Some(true);
                    held.clear();
                    for ((service, enable), outcome) in cmds.into_iter().zip(applied) {
                        match outcome {
                            Applied::Done => {
                                if problems.remove(&service).is_some() {
                                    tracing::info!(service, "[announce] bird protocol now in step");
                                }
                                if want.contains_key(&service) {
                                    held.insert(service, enable);
                                }
                            }
                            Applied::Failed(msg) => {
                                if problems.get(&service) != Some(&msg) {
                                    tracing::error!(service, "[announce] {msg}");
                                    problems.insert(service.clone(), msg);
                                }
                                if want.contains_key(&service) {
                                    held.insert(service, false);
                                }
                            }
                        }
                    }
                    last_want = Some(want);
                    next_sync = Instant::now() + RESYNC;
                }
                Err(msg) => {
                    if reachable != Some(false) {
                        tracing::error!(
                            socket = %bird.socket.display(),
                            "[announce] bird unreachable: {msg}; retrying every {}s",
                            RETRY.as_secs()
                        );
                    }
                    reachable = Some(false);
                    // bird down means its sessions are down: nothing is announced.
                    held = want.keys().map(|s| (s.clone(), false)).collect();
                    last_want = None;
                    next_sync = Instant::now() + RETRY;
                }
            }
            shared.announce.set_announced(held.clone());
            for w in waiting.drain(..) {
                let _ = w.send(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            f = flush.recv() => match f {
                Some(reply) => waiting.push(reply),
                None => return,
            },
        }
    }
}

impl Bird {
    /// One conversation: connect, read the greeting, send each command and read its reply.
    /// `Err` when bird cannot be reached or talked to; per-protocol refusals are
    /// [`Applied::Failed`].
    async fn apply(&self, cmds: &[(String, bool)]) -> Result<Vec<Applied>, String> {
        let stream = connect(&self.socket).await?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = read_reply(&mut lines).await?;
        if !greeting.iter().any(|(c, _)| *c == 1) {
            return Err(format!(
                "unexpected greeting {greeting:?} (is this bird's control socket?)"
            ));
        }
        let mut out = Vec::with_capacity(cmds.len());
        for (service, enable) in cmds {
            let proto = format!("{}{service}", self.prefix);
            let cmd = bird_command(*enable, &proto);
            w.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(|e| format!("cannot write to bird: {e}"))?;
            let reply = read_reply(&mut lines).await?;
            out.push(match bird_outcome(&reply) {
                BirdOutcome::Done => Applied::Done,
                BirdOutcome::NoSuchProtocol => Applied::Failed(format!(
                    "bird has no protocol named {proto}: define a static protocol {proto} with `disabled yes` exporting the VIP route (see docs/fleet.md)"
                )),
                BirdOutcome::Refused(code, text) => {
                    Applied::Failed(format!("bird refused `{cmd}`: {code:04} {text}"))
                }
            });
        }
        Ok(out)
    }
}

async fn connect(path: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("control socket {} does not exist", path.display())
        } else {
            format!("cannot connect to {}: {e}", path.display())
        }
    })
}

/// Reads one reply: coded lines up to the one that ends it.
async fn read_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Vec<(u16, String)>, String> {
    let mut reply = Vec::new();
    loop {
        let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| format!("cannot read from bird: {e}"))?
        else {
            return Err("bird closed the connection".into());
        };
        match parse_bird_line(&line) {
            Some(BirdLine::Coded { code, last, text }) => {
                reply.push((code, text));
                if last {
                    return Ok(reply);
                }
            }
            Some(BirdLine::More(_)) => {}
            None => return Err(format!("unexpected line from bird: {line:?}")),
        }
    }
}
