//! `[announce]`: VIP announcement through an existing BGP speaker (bird2 or exabgp).

use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::{Table, Value};

use super::raw::{RawAnnounce, RawService};
use super::value::SpeakerKind;
use super::ConfigError;
use crate::announce::is_bird_symbol;

/// `[announce] socket` when absent: Debian's bird2 control socket.
pub const BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// `[announce] protocol_prefix` when absent.
pub const PROTOCOL_PREFIX: &str = "fulcrum_";
/// `[announce] withdraw_grace` when absent.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(2);
/// `[announce] announce_delay` when absent.
pub const ANNOUNCE_DELAY: Duration = Duration::from_secs(2);

/// `[announce]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Which speaker, with its options.
    pub speaker: Speaker,
    /// On SIGTERM: withdraw, wait this long (routers move new flows elsewhere), then drain.
    pub withdraw_grace: Duration,
    /// Before a VIP is announced (at start, and again after it was withdrawn), its
    /// service's health must have held still this long (see `should_announce`).
    pub announce_delay: Duration,
    /// A TUN device the instance creates at start; the kernel deletes it when the process
    /// ends (however it ends), so a bird static route `via "NAME"` disappears with it.
    pub liveness_interface: Option<String>,
}

/// The BGP speaker and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaker {
    /// bird2: Fulcrum enables/disables one static protocol per service through bird's
    /// control socket.
    Bird {
        /// bird's control socket.
        socket: PathBuf,
        /// Protocol name = this + the service name (together a bird symbol).
        protocol_prefix: String,
    },
    /// exabgp: `fulcrum announce -c FILE` runs as its API process.
    Exabgp,
}

impl Speaker {
    /// The config name.
    pub const fn kind(&self) -> SpeakerKind {
        match self {
            Self::Bird { .. } => SpeakerKind::Bird,
            Self::Exabgp => SpeakerKind::Exabgp,
        }
    }
}

impl AnnounceConfig {
    /// bird: the protocol name of service `service`.
    pub fn bird_protocol(&self, service: &str) -> Option<String> {
        match &self.speaker {
            Speaker::Bird {
                protocol_prefix, ..
            } => Some(format!("{protocol_prefix}{service}")),
            Speaker::Exabgp => None,
        }
    }
}

/// Validates `[announce]`; errors point at the offending key. `services` are checked to
/// make bird protocol names.
pub(super) fn validate(
    a: &RawAnnounce,
    services: &[Spanned<RawService>],
    errs: &mut Vec<ConfigError>,
) -> AnnounceConfig {
    let mut err = |span: std::ops::Range<usize>, message: String, help: &str| {
        errs.push(ConfigError {
            message,
            help: Some(help.to_owned()),
            span: Some(span),
        });
    };
    let kind = a.speaker.get_ref().0;
    let speaker = match kind {
        SpeakerKind::Bird => {
            let prefix = a
                .protocol_prefix
                .as_ref()
                .map_or(PROTOCOL_PREFIX, |p| p.get_ref().as_str());
            if let Some(p) = &a.protocol_prefix {
                if !is_bird_symbol(p.get_ref()) {
                    err(
                        p.span(),
                        format!("invalid protocol_prefix \"{}\"", p.get_ref()),
                        "a bird symbol: a letter, then letters, digits and '_', e.g. \"fulcrum_\"",
                    );
                }
            }
            for s in services {
                let name = &s.get_ref().name;
                let proto = format!("{prefix}{}", name.get_ref().0);
                if is_bird_symbol(prefix) && !is_bird_symbol(&proto) {
                    err(
                        name.span(),
                        format!("service name \"{}\" makes the bird protocol name \"{proto}\", which bird cannot have", name.get_ref().0),
                        "with [announce] speaker = \"bird\", service names are made of letters, digits and '_' (at most 64 characters with the prefix)",
                    );
                }
            }
            Speaker::Bird {
                socket: a
                    .socket
                    .as_ref()
                    .map_or_else(|| PathBuf::from(BIRD_SOCKET), |s| s.get_ref().clone()),
                protocol_prefix: prefix.to_owned(),
            }
        }
        SpeakerKind::Exabgp => {
            for (key, span) in [
                ("socket", a.socket.as_ref().map(Spanned::span)),
                (
                    "protocol_prefix",
                    a.protocol_prefix.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    err(
                        span,
                        format!("{key} is a bird setting; speaker = \"exabgp\" does not use it"),
                        "remove it, or use speaker = \"bird\"",
                    );
                }
            }
            Speaker::Exabgp
        }
    };
    let withdraw_grace = duration_key(
        errs,
        a.withdraw_grace.as_ref(),
        ("withdraw_grace", "drain at once"),
        WITHDRAW_GRACE,
        &super::limits::WITHDRAW_GRACE,
    );
    let announce_delay = duration_key(
        errs,
        a.announce_delay.as_ref(),
        ("announce_delay", "announce once health has settled"),
        ANNOUNCE_DELAY,
        &super::limits::ANNOUNCE_DELAY,
    );
    let liveness_interface = a.liveness_interface.as_ref().map(|n| {
        if !is_interface_name(n.get_ref()) {
            errs.push(ConfigError {
                message: format!("invalid liveness_interface \"{}\"", n.get_ref()),
                help: Some("a network interface name that does not exist yet: 1 to 15 characters among letters, digits, '_', '-' and '.', e.g. \"fulcrum0\"".to_owned()),
                span: Some(n.span()),
            });
        }
        n.get_ref().clone()
    });
    AnnounceConfig {
        speaker,
        withdraw_grace,
        announce_delay,
        liveness_interface,
    }
}

/// A duration key of `[announce]`: its value (or `default`), an error when out of `range`.
/// `key` is its name and what 0 means.
fn duration_key(
    errs: &mut Vec<ConfigError>,
    v: Option<&Spanned<super::value::HumanDuration>>,
    key: (&str, &str),
    default: Duration,
    range: &std::ops::RangeInclusive<Duration>,
) -> Duration {
    v.map_or(default, |d| {
        if !range.contains(&d.get_ref().0) {
            errs.push(ConfigError {
                message: format!(
                    "{} {} is out of range",
                    key.0,
                    humantime::format_duration(d.get_ref().0)
                ),
                help: Some(format!(
                    "valid: {} (0: {})",
                    super::limits::show(range),
                    key.1
                )),
                span: Some(d.span()),
            });
        }
        d.get_ref().0
    })
}
/// Whether `s` can name a Linux network interface: 1 to 15 bytes of letters, digits, `_`,
/// `-` and `.`, not `.` or `..`.
pub fn is_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `fulcrum check`'s line for `[announce]`.
pub(super) fn summary_line(a: &AnnounceConfig) -> String {
    let grace = humantime::format_duration(a.withdraw_grace);
    let delay = humantime::format_duration(a.announce_delay);
    match &a.speaker {
        Speaker::Bird {
            socket,
            protocol_prefix,
        } => format!(
            "announce: bird at {} (protocols {protocol_prefix}SERVICE), withdraw_grace {grace}, announce_delay {delay}",
            socket.display()
        ),
        Speaker::Exabgp => {
            format!(
                "announce: exabgp (its process: fulcrum announce -c FILE), withdraw_grace {grace}, announce_delay {delay}"
            )
        }
    }
}

/// The `[announce]` table, defaults left out.
pub(super) fn emit(a: &AnnounceConfig) -> Table {
    let mut t = Table::new();
    t.insert(
        "speaker".into(),
        Value::String(a.speaker.kind().as_str().into()),
    );
    if let Speaker::Bird {
        socket,
        protocol_prefix,
    } = &a.speaker
    {
        if socket.as_os_str() != BIRD_SOCKET {
            t.insert(
                "socket".into(),
                Value::String(socket.to_string_lossy().into_owned()),
            );
        }
        if protocol_prefix != PROTOCOL_PREFIX {
            t.insert(
                "protocol_prefix".into(),
                Value::String(protocol_prefix.clone()),
            );
        }
    }
    if a.withdraw_grace != WITHDRAW_GRACE {
        t.insert(
            "withdraw_grace".into(),
            Value::String(humantime::format_duration(a.withdraw_grace).to_string()),
        );
    }
    if let Some(n) = &a.liveness_interface {
        t.insert("liveness_interface".into(), Value::String(n.clone()));
    }
    if a.announce_delay != ANNOUNCE_DELAY {
        t.insert(
            "announce_delay".into(),
            Value::String(humantime::format_duration(a.announce_delay).to_string()),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_all};
    use super::*;

    const BASE: &str = r#"
[[service]]
name = "web"
listen = "198.18.0.10:80"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;

    #[test]
    fn bird_defaults_and_round_trip() {
        let c = parse(&format!("{BASE}\n[announce]\nspeaker = \"bird\"\n")).unwrap();
        let a = c.announce.clone().unwrap();
        assert_eq!(
            a.speaker,
            Speaker::Bird {
                socket: BIRD_SOCKET.into(),
                protocol_prefix: "fulcrum_".into()
            }
        );
        assert_eq!(a.withdraw_grace, Duration::from_secs(2));
        assert_eq!(a.announce_delay, Duration::from_secs(2));
        assert_eq!(a.bird_protocol("web").as_deref(), Some("fulcrum_web"));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        assert!(
            c.summary().contains(
                "announce: bird at /run/bird/bird.ctl (protocols fulcrum_SERVICE), withdraw_grace 2s"
            ),
            "{}",
            c.summary()
        );

        let c = parse(&format!(
            "{BASE}\n[announce]\nspeaker = \"bird\"\nsocket = \"/tmp/b.ctl\"\nprotocol_prefix = \"lb_\"\nwithdraw_grace = \"500ms\"\nannounce_delay = \"0s\"\nliveness_interface = \"fulcrum0\"\n"
        ))
        .unwrap();
        let a = c.announce.clone().unwrap();
        assert_eq!(a.bird_protocol("web").as_deref(), Some("lb_web"));
        assert_eq!(a.withdraw_grace, Duration::from_millis(500));
        assert_eq!(a.announce_delay, Duration::ZERO);
        assert_eq!(a.liveness_interface.as_deref(), Some("fulcrum0"));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn exabgp_round_trip() {
        let c = parse(&format!(
            "{BASE}\n[announce]\nspeaker = \"exabgp\"\nwithdraw_grace = \"0s\"\n"
        ))
        .unwrap();
        let a = c.announce.clone().unwrap();
        assert_eq!(a.speaker, Speaker::Exabgp);
        assert_eq!(a.withdraw_grace, Duration::ZERO);
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    fn first_error(text: &str) -> String {
        let e = parse(text).unwrap_err();
        format!("{} | {}", e.message, e.help.unwrap_or_default())
    }

    #[test]
    fn bad_announce_tables() {
        let e = first_error(&format!("{BASE}\n[announce]\nspeaker = \"gobgp\"\n"));
        assert!(
            e.contains("unknown announce speaker \"gobgp\"") && e.contains("bird, exabgp"),
            "{e}"
        );
        let e = first_error(&format!("{BASE}\n[announce]\nsocket = \"/x\"\n"));
        assert!(e.contains("speaker"), "{e}");
        let e = first_error(&format!(
            "{BASE}\n[announce]\nspeaker = \"bird\"\nprotocol_prefix = \"9x\"\n"
        ));
        assert!(e.contains("invalid protocol_prefix \"9x\""), "{e}");
        let e = first_error(&format!(
            "{BASE}\n[announce]\nspeaker = \"exabgp\"\nsocket = \"/x\"\n"
        ));
        assert!(e.contains("socket is a bird setting"), "{e}");
        let e = first_error(&format!(
            "{BASE}\n[announce]\nspeaker = \"bird\"\nbogus = 1\n"
        ));
        assert!(e.contains("bogus"), "{e}");
        let e = first_error(&format!(
            "{BASE}\n[announce]\nspeaker = \"bird\"\nwithdraw_grace = \"2h\"\n"
        ));
        assert!(
            e.contains("withdraw_grace 2h is out of range") && e.contains("0s..=1h"),
            "{e}"
        );
        let e = first_error(&format!(
            "{BASE}\n[announce]\nspeaker = \"bird\"\nannounce_delay = \"61min\"\n"
        ));
        assert!(
            e.contains("announce_delay 1h 1m is out of range") && e.contains("0s..=1h"),
            "{e}"
        );
        for bad in ["", "a/b", "sixteen_chars_xx", "..", "a b"] {
            let e = first_error(&format!(
                "{BASE}\n[announce]\nspeaker = \"bird\"\nliveness_interface = \"{bad}\"\n"
            ));
            assert!(e.contains("invalid liveness_interface"), "{bad:?}: {e}");
        }
        let dashed = BASE.replace("name = \"web\"", "name = \"web-1\"");
        let errs = parse_all(&format!("{dashed}\n[announce]\nspeaker = \"bird\"\n")).unwrap_err();
        assert!(
            errs[0].message.contains("\"fulcrum_web-1\""),
            "{:?}",
            errs[0]
        );
        // The same name is fine for exabgp, and without [announce].
        assert!(parse(&format!("{dashed}\n[announce]\nspeaker = \"exabgp\"\n")).is_ok());
        assert!(parse(&dashed).is_ok());
    }
}
