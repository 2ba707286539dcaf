//! Next hops resolved ahead of traffic (docs/xdp.md, "Next hops").
//!
//! `bpf_fib_lookup` only reads the kernel's neighbour table: it cannot resolve a next hop.
//! A backend whose next hop has no valid entry (never resolved, flushed, garbage-collected)
//! gets nothing from the data path until something else resolves it. So for every
//! backend's next hop (the route's gateway, or the backend itself when it is on-link) this
//! module keeps a **managed** neighbour entry (`NTF_EXT_MANAGED`, Linux >= 5.16): the
//! kernel resolves it at once and keeps it resolved (re-probing it) without traffic.
//! [`Neighbours::reconcile`] runs at start (before the program is attached), after every
//! change of the backends, every second, and whenever the data path reports a failed
//! lookup (`nh_miss`), so a flushed or expired entry is back within a second.
//!
//! Talks rtnetlink directly (`RTM_GETROUTE`, `RTM_GETNEIGH` dump, `RTM_NEWNEIGH`,
//! `RTM_DELNEIGH`): a few fixed-layout messages.
#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_VIA: u16 = 18;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;
/// `NUD_PERMANENT | NUD_NOARP`: static entries, left alone.
const NUD_STATIC: u16 = 0x80 | 0x40;
/// `NUD_VALID`: what `bpf_fib_lookup` accepts (REACHABLE, STALE, DELAY, PROBE, static).
pub const NUD_VALID: u16 = 0x80 | 0x40 | 0x02 | 0x04 | 0x08 | 0x10;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// A next hop: the neighbour `addr` on interface `ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// A neighbour table entry as the dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighEntry {
    /// `NUD_*` bits.
    pub state: u16,
    pub managed: bool,
}

/// What one [`Neighbours::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// The distinct next hops of the backends.
    pub next_hops: usize,
    /// Entries made managed (created, or an existing dynamic entry flagged) by this call.
    pub created: Vec<NextHop>,
    /// Next hops without a valid entry yet (resolution under way, or the neighbour does not
    /// answer).
    pub pending: Vec<NextHop>,
    /// Backends the kernel has no unicast route to.
    pub unroutable: Vec<IpAddr>,
    /// Next hops whose entry the kernel refused to create or flag (and why).
    pub failed: Vec<(NextHop, String)>,
}

/// Why a request failed: the kernel refused it (an errno in `NLMSG_ERROR`), or the socket
/// failed (including no answer within 1 s).
#[derive(Debug)]
enum NlError {
    Kernel(io::Error),
    Socket(io::Error),
}

impl From<NlError> for io::Error {
    fn from(e: NlError) -> Self {
        match e {
            NlError::Kernel(e) | NlError::Socket(e) => e,
        }
    }
}

/// An rtnetlink socket and the managed entries this process created.
#[derive(Debug)]
pub struct Neighbours {
    fd: OwnedFd,
    seq: u32,
    /// Entries made managed by this process: deleted again when no backend needs them.
    ours: BTreeSet<NextHop>,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn addr_attr(a: IpAddr) -> (u8, Vec<u8>) {
    match a {
        IpAddr::V4(v) => (AF_INET, v.octets().to_vec()),
        IpAddr::V6(v) => (AF_INET6, v.octets().to_vec()),
    }
}

fn addr_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The attributes after a fixed header of `hdr` bytes: (type, payload) pairs; a malformed
/// attribute ends the list.
fn attrs(msg: &[u8], hdr: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = hdr;
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if len < 4 || off + len > msg.len() {
            break;
        }
        out.push((kind, &msg[off + 4..off + len]));
        off += len.next_multiple_of(4);
    }
    out
}

/// The next hop a `RTM_NEWROUTE` answer describes: the gateway (or the destination itself
/// when on-link) and the output interface. `None` unless it is a unicast route.
pub fn parse_route(msg: &[u8], dst: IpAddr) -> Option<NextHop> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    if msg.len() < 12 || msg[7] != RTN_UNICAST {
        return None;
    }
    let mut oif = None;
    let mut via = dst;
    for (kind, data) in attrs(msg, 12) {
        match kind {
            RTA_OIF if data.len() == 4 => {
                oif = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
            }
            RTA_GATEWAY => via = addr_from(msg[0], data).unwrap_or(via),
            // struct rtvia: family (u16), address (an IPv4 route via an IPv6 gateway)
            RTA_VIA if data.len() > 2 => {
                via = addr_from(data[0], &data[2..]).unwrap_or(via);
            }
            _ => {}
        }
    }
    oif.map(|ifindex| NextHop { ifindex, addr: via })
}

/// One entry of a `RTM_NEWNEIGH` dump message.
pub fn parse_neigh(msg: &[u8]) -> Option<(NextHop, NeighEntry)> {
    // struct ndmsg: family, pad1, pad2(u16), ifindex(i32), state(u16), flags, type
    if msg.len() < 12 {
        return None;
    }
    let family = msg[0];
    let ifindex = u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let state = u16::from_ne_bytes([msg[8], msg[9]]);
    let mut addr = None;
    let mut ext = 0u32;
    for (kind, data) in attrs(msg, 12) {
        match kind {
            NDA_DST => addr = addr_from(family, data),
            NDA_FLAGS_EXT if data.len() == 4 => {
                ext = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            }
            _ => {}
        }
    }
    Some((
        NextHop {
            ifindex,
            addr: addr?,
        },
        NeighEntry {
            state,
            managed: ext & NTF_EXT_MANAGED != 0,
        },
    ))
}

impl Neighbours {
    /// Opens the rtnetlink socket (of the calling thread's network namespace).
    pub fn new() -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::NETLINK_ROUTE)),
        )?;
        // a kernel that does not answer cannot stall the caller for long
        socket.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        let fd = OwnedFd::from(socket);
        Ok(Self {
            fd,
            seq: 0,
            ours: BTreeSet::new(),
        })
    }

    /// Sends one request and collects the payloads of the answers (after their
    /// `nlmsghdr`) until the dump ends, the ACK, or a single answer (`single`).
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        single: bool,
    ) -> Result<Vec<(u16, Vec<u8>)>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; all zero = the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and to are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(NlError::Socket(io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(NlError::Socket(io::Error::last_os_error()));
            }
            let data = &buf[..n as usize];
            let mut off = 0;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                if len < 16 || off + len > data.len() {
                    break;
                }
                let mtype = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
                let mseq = u32::from_ne_bytes([
                    data[off + 8],
                    data[off + 9],
                    data[off + 10],
                    data[off + 11],
                ]);
                let payload = &data[off + 16..off + len];
                off += len.next_multiple_of(4);
                if mseq != seq {
                    continue; // an answer to an earlier request that timed out
                }
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if err == 0 {
                            return Ok(out);
                        }
                        return Err(NlError::Kernel(io::Error::from_raw_os_error(-err)));
                    }
                    _ => {
                        out.push((mtype, payload.to_vec()));
                        if single {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// The next hop the kernel's routing table gives towards `dst` (`None`: no unicast
    /// route: unreachable, local, blackhole...).
    pub fn route(&mut self, dst: IpAddr) -> io::Result<Option<NextHop>> {
        let (family, bytes) = addr_attr(dst);
        let mut body = vec![0u8; 12];
        body[0] = family;
        body[1] = (bytes.len() * 8) as u8;
        push_attr(&mut body, RTA_DST, &bytes);
        match self.request(RTM_GETROUTE, 0, &body, true) {
            Ok(answers) => Ok(answers
                .iter()
                .find(|(t, _)| *t == RTM_NEWROUTE)
                .and_then(|(_, m)| parse_route(m, dst))),
            // ENETUNREACH, EHOSTUNREACH, EINVAL (blackhole)...: no route
            Err(NlError::Kernel(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The kernel's neighbour table (IPv4 and IPv6).
    pub fn dump(&mut self) -> io::Result<HashMap<NextHop, NeighEntry>> {
        let body = vec![0u8; 12]; // ndmsg, family AF_UNSPEC: both tables
        let answers = self
            .request(RTM_GETNEIGH, NLM_F_DUMP, &body, false)
            .map_err(io::Error::from)?;
        Ok(answers
            .iter()
            .filter(|(t, _)| *t == RTM_NEWNEIGH)
            .filter_map(|(_, m)| parse_neigh(m))
            .collect())
    }

    fn neigh_msg(nh: NextHop, state: u16) -> Vec<u8> {
        let (family, bytes) = addr_attr(nh.addr);
        let mut body = vec![0u8; 12];
        body[0] = family;
        body[4..8].copy_from_slice(&nh.ifindex.to_ne_bytes());
        body[8..10].copy_from_slice(&state.to_ne_bytes());
        push_attr(&mut body, NDA_DST, &bytes);
        body
    }

    /// Creates a managed entry for `nh`, or flags the existing dynamic entry managed (its
    /// state and link-layer address are kept). Never call it on a static entry: the kernel
    /// turns a permanent entry into a managed one that must be resolved again.
    pub fn set_managed(&mut self, nh: NextHop) -> io::Result<()> {
        let mut body = Self::neigh_msg(nh, 0); // NUD_NONE
        push_attr(&mut body, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        self.request(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &body,
            false,
        )
        .map_err(io::Error::from)?;
        Ok(())
    }

    /// Deletes the entry of `nh`.
    pub fn delete(&mut self, nh: NextHop) -> io::Result<()> {
        let body = Self::neigh_msg(nh, 0);
        self.request(RTM_DELNEIGH, NLM_F_ACK, &body, false)
            .map_err(io::Error::from)?;
        Ok(())
    }

    /// Makes sure every next hop of `backends` has a managed (or static) neighbour entry,
    /// and deletes the managed entries this process created that no backend needs any more.
    pub fn reconcile(&mut self, backends: &[IpAddr]) -> io::Result<Reconciled> {
        let mut out = Reconciled::default();
        let mut wanted = BTreeSet::new();
        let distinct: BTreeSet<IpAddr> = backends.iter().copied().collect();
        for b in distinct {
            match self.route(b)? {
                Some(nh) => {
                    wanted.insert(nh);
                }
                None => out.unroutable.push(b),
            }
        }
        out.next_hops = wanted.len();
        let table = self.dump()?;
        for nh in &wanted {
            let entry = table.get(nh);
            match entry {
                Some(e) if e.state & NUD_STATIC != 0 => continue,
                Some(e) if e.managed => {}
                _ => match self.set_managed(*nh) {
                    Ok(()) => {
                        self.ours.insert(*nh);
                        out.created.push(*nh);
                    }
                    Err(e) => out.failed.push((*nh, e.to_string())),
                },
            }
            if entry.is_none_or(|e| e.state & NUD_VALID == 0) {
                out.pending.push(*nh);
            }
        }
        let stale: Vec<NextHop> = self.ours.difference(&wanted).copied().collect();
        for nh in stale {
            self.ours.remove(&nh);
            if table.get(&nh).is_some_and(|e| e.managed) {
                // already gone is fine
                let _ = self.delete(nh);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(hdr: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = hdr.to_vec();
        for (k, d) in attrs {
            push_attr(&mut m, *k, d);
        }
        m
    }

    #[test]
    fn route_answers_give_the_gateway_or_the_destination() {
        let dst: IpAddr = "198.18.1.11".parse().expect("ip");
        let mut hdr = [0u8; 12];
        hdr[0] = AF_INET;
        hdr[7] = RTN_UNICAST;
        let on_link = msg(
            &hdr,
            &[(RTA_DST, &[198, 18, 1, 11]), (RTA_OIF, &7u32.to_ne_bytes())],
        );
        assert_eq!(
            parse_route(&on_link, dst),
            Some(NextHop {
                ifindex: 7,
                addr: dst
            })
        );
        let routed = msg(
            &hdr,
            &[
                (RTA_OIF, &3u32.to_ne_bytes()),
                (RTA_GATEWAY, &[198, 18, 0, 1]),
            ],
        );
        assert_eq!(
            parse_route(&routed, dst).map(|n| (n.ifindex, n.addr.to_string())),
            Some((3, "198.18.0.1".to_owned()))
        );
        let mut via = vec![AF_INET6, 0];
        via.extend_from_slice(
            &"2001:2::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        let v6gw = msg(&hdr, &[(RTA_OIF, &3u32.to_ne_bytes()), (RTA_VIA, &via)]);
        assert_eq!(
            parse_route(&v6gw, dst).map(|n| n.addr.to_string()),
            Some("2001:2::1".to_owned())
        );
        let mut unreachable = hdr;
        unreachable[7] = 7; // RTN_UNREACHABLE
        assert_eq!(parse_route(&msg(&unreachable, &[]), dst), None);
        // truncated and malformed input: no answer, no panic
        assert_eq!(parse_route(&routed[..5], dst), None);
        let mut bad = routed.clone();
        bad[12] = 200; // attribute longer than the message
        assert_eq!(parse_route(&bad, dst), None);
    }

    #[test]
    fn neighbour_dump_entries_carry_state_and_the_managed_flag() {
        let mut hdr = [0u8; 12];
        hdr[0] = AF_INET6;
        hdr[4..8].copy_from_slice(&5u32.to_ne_bytes());
        hdr[8..10].copy_from_slice(&0x04u16.to_ne_bytes()); // STALE
        let a: std::net::Ipv6Addr = "2001:2::11".parse().expect("ip");
        let m = msg(
            &hdr,
            &[
                (NDA_DST, &a.octets()),
                (NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes()),
            ],
        );
        let (nh, e) = parse_neigh(&m).expect("entry");
        assert_eq!(nh.ifindex, 5);
        assert_eq!(nh.addr, IpAddr::V6(a));
        assert!(e.managed);
        assert!(e.state & NUD_VALID != 0);
        let plain = msg(&hdr, &[(NDA_DST, &a.octets())]);
        assert!(!parse_neigh(&plain).expect("entry").1.managed);
        assert_eq!(parse_neigh(&hdr[..8]), None);
        assert_eq!(parse_neigh(&hdr), None, "no address");
    }
}
