//! The dns answerer's fast path against hickory-proto: many random queries (plain ones,
//! mixed case, every type, EDNS with and without Client Subnet, malformed ones, mutated
//! bytes) over UDP, TCP and HTTPS are answered by `answer` (fast path where it applies) and
//! by `answer_reference` (hickory-proto alone) with twin pools of every scheduler, fed in
//! lockstep: every reply, rcode, drop and answered backend must be the same, byte for byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use fulcrum_core::dns::{answer_into, answer_reference, Incoming, Rrl, Transport, Zone};
use fulcrum_core::model::{Backend, BackendState, HashKey, SchedulerKind};

#[path = "common/pool.rs"]
mod pool;

use pool::TestPool;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// The pools, by `Zone::pools` name: (v4 count, v6 count, down indices, weights vary).
fn backends(pool: &str) -> Vec<Backend> {
    let (v4, v6, down): (u8, u16, &[usize]) = match pool {
        "web" => (4, 2, &[1]),
        "v6" => (0, 3, &[]),
        "dead" => (3, 1, &[0, 1, 2, 3]),
        "big" => (40, 30, &[5]),
        "dup" => (3, 0, &[]),
        _ => (1, 0, &[]),
    };
    let mut out: Vec<Backend> = (1..=v4)
        .map(|i| {
            Backend::new(
                SocketAddr::from(([198, 18, 0, i], 80)),
                u16::from(i % 3) + 1,
            )
        })
        .chain((1..=v6).map(|i| {
            Backend::new(
                SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i), 80)),
                1,
            )
        }))
        .collect();
    if pool == "dup" {
        // The same IP on two ports: answered once.
        out.push(Backend::new(SocketAddr::from(([198, 18, 0, 1], 81)), 1));
    }
    for &d in down {
        out[d].state = BackendState::Down;
    }
    out
}

fn pools(zone: &Zone, kind: SchedulerKind) -> Vec<TestPool> {
    zone.pools()
        .iter()
        .map(|p| {
            let backends = backends(p);
            let loads = (0..backends.len() as u64).map(|i| i % 3).collect();
            TestPool::new(kind, HashKey::SrcIp, backends).with_loads(loads)
        })
        .collect()
}

fn zone() -> Zone {
    let cfg = fulcrum_core::config::parse(
        "[[service]]\nname = \"d\"\nlisten = \"127.0.0.1:53\"\nprotocol = \"dns\"\npool = \"web\"\n\
         [[service.dns_name]]\nname = \"www.example.test\"\nmax_answers = 3\n\
         [[service.dns_name]]\nname = \"Mixed.Example.test\"\n\
         [[service.dns_name]]\nname = \"v6.example.test\"\npool = \"v6\"\nmax_answers = 2\n\
         [[service.dns_name]]\nname = \"dead.example.test\"\npool = \"dead\"\nttl = \"60s\"\n\
         [[service.dns_name]]\nname = \"big.example.test\"\npool = \"big\"\nmax_answers = 64\n\
         [[service.dns_name]]\nname = \"dup.example.test\"\npool = \"dup\"\nmax_answers = 8\n\
         [[service.dns_name]]\nname = \"a.b.example.test\"\nmax_answers = 10\n\
         [[service.dns_name]]\nname = \"example.test\"\n\
         [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\", \"ns2.example.test\"]\n\
         [service.dns_rrl]\nresponses_per_second = 40\nslip = 2\n\
         [[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n\
         [[pool]]\nname = \"v6\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n\
         [[pool]]\nname = \"dead\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n\
         [[pool]]\nname = \"big\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n\
         [[pool]]\nname = \"dup\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dns = cfg.services[0].dns().cloned().expect("a dns service");
    Zone::new(&dns, 3).expect("the zone builds")
}

const NAMES: [&str; 14] = [
    "www.example.test",
    "mixed.example.test",
    "v6.example.test",
    "dead.example.test",
    "big.example.test",
    "dup.example.test",
    "a.b.example.test",
    "b.example.test",
    "example.test",
    "nope.example.test",
    "www.example.org",
    "test",
    "x.www.example.test",
    "",
];

fn name_wire(rng: &mut Rng, out: &mut Vec<u8>) {
    let name = *rng.pick(&NAMES);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        for c in label.bytes() {
            out.push(if rng.chance(15) {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
    }
    out.push(0);
}

fn query(rng: &mut Rng) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(&(rng.next() as u16).to_be_bytes());
    p.push(if rng.chance(85) {
        *rng.pick(&[0x00, 0x01])
    } else {
        rng.next() as u8
    });
    p.push(if rng.chance(80) { 0 } else { rng.next() as u8 });
    let qd: u16 = if rng.chance(95) {
        1
    } else {
        *rng.pick(&[0, 2])
    };
    let an = u16::from(!rng.chance(97));
    let edns = rng.chance(60);
    let ar: u16 = u16::from(edns) + u16::from(rng.chance(2));
    for c in [qd, an, 0, ar] {
        p.extend_from_slice(&c.to_be_bytes());
    }
    for _ in 0..qd.max(1) {
        name_wire(rng, &mut p);
        let qtype: u16 = *rng.pick(&[1, 1, 1, 28, 28, 255, 6, 2, 15, 16, 0, 41]);
        p.extend_from_slice(&qtype.to_be_bytes());
        let class: u16 = if rng.chance(95) {
            1
        } else {
            *rng.pick(&[3, 255, 254])
        };
        p.extend_from_slice(&class.to_be_bytes());
    }
    if edns {
        p.push(0);
        p.extend_from_slice(&41u16.to_be_bytes());
        let payload: u16 = *rng.pick(&[0, 100, 512, 1232, 1232, 4096, 65535]);
        p.extend_from_slice(&payload.to_be_bytes());
        p.push(if rng.chance(90) { 0 } else { rng.next() as u8 }); // extended rcode
        p.push(u8::from(!rng.chance(90))); // version
        p.extend_from_slice(&(if rng.chance(50) { 0x8000u16 } else { 0 }).to_be_bytes());
        let mut data = Vec::new();
        if rng.chance(50) {
            let v4 = rng.chance(60);
            let max = if v4 { 32 } else { 128 };
            let source = if rng.chance(90) {
                rng.below(max + 1) as u8
            } else {
                rng.next() as u8
            };
            let mut len = usize::from(source).div_ceil(8);
            if rng.chance(5) {
                len += 1;
            }
            data.extend_from_slice(&8u16.to_be_bytes());
            data.extend_from_slice(&((4 + len) as u16).to_be_bytes());
            data.extend_from_slice(&(if v4 { 1u16 } else { 2 }).to_be_bytes());
            data.push(source);
            data.push(if rng.chance(90) { 0 } else { rng.next() as u8 });
            for _ in 0..len {
                data.push(rng.next() as u8);
            }
        }
        if rng.chance(30) {
            // A cookie (dig sends one), or another option.
            let code: u16 = *rng.pick(&[10, 10, 12, 3, 5, 8]);
            let len = rng.below(12) as usize;
            data.extend_from_slice(&code.to_be_bytes());
            data.extend_from_slice(&(len as u16).to_be_bytes());
            for _ in 0..len {
                data.push(rng.next() as u8);
            }
        }
        let rdlen = if rng.chance(95) {
            data.len() as u16
        } else {
            rng.below(data.len() as u64 + 3) as u16
        };
        p.extend_from_slice(&rdlen.to_be_bytes());
        p.extend_from_slice(&data);
    }
    if rng.chance(3) {
        let extra = rng.below(5);
        for _ in 0..extra {
            p.push(rng.next() as u8);
        }
    }
    if rng.chance(5) && !p.is_empty() {
        let i = rng.below(p.len() as u64) as usize;
        p[i] = rng.next() as u8;
    }
    if rng.chance(2) {
        let cut = rng.below(p.len() as u64 + 1) as usize;
        p.truncate(cut);
    }
    p
}

#[test]
fn the_fast_path_answers_as_hickory_does() {
    let mut zone = zone();
    let mut fast_total = 0;
    let mut total = 0;
    for (k, kind) in SchedulerKind::ALL.into_iter().enumerate() {
        let fast_pools = pools(&zone, kind);
        let ref_pools = pools(&zone, kind);
        // rr and wrr: the fast path answers from tables of their rotations.
        zone.prepare(fast_pools.as_slice());
        let (mut rrl_a, mut rrl_b) = (Rrl::default(), Rrl::default());
        let mut rng = Rng(0x5eed + k as u64);
        let (mut reply, mut answered) = (Vec::new(), Vec::new());
        for n in 0..20_000u64 {
            let packet = query(&mut rng);
            let client = if rng.chance(70) {
                IpAddr::V4(Ipv4Addr::new(
                    198,
                    18,
                    rng.below(4) as u8,
                    rng.below(256) as u8,
                ))
            } else {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    rng.below(3) as u16,
                    0,
                    0,
                    0,
                    0,
                    1,
                ))
            };
            let transport = *rng.pick(&[
                Transport::Udp,
                Transport::Udp,
                Transport::Tcp,
                Transport::Https,
            ]);
            let q = Incoming {
                packet: &packet,
                client,
                transport,
                random: rng.next(),
                now: Duration::from_millis(1000 + n),
            };
            let s = answer_into(
                &zone,
                fast_pools.as_slice(),
                &q,
                Some(&mut rrl_a),
                &mut reply,
                &mut answered,
            );
            let r = answer_reference(&zone, ref_pools.as_slice(), &q, Some(&mut rrl_b));
            let ctx = || format!("{kind:?} query {n} {transport:?} {packet:02x?}");
            assert_eq!(
                (s.dropped, s.qtype, s.rcode, s.truncated),
                (r.dropped, r.qtype, r.rcode, r.truncated),
                "{}",
                ctx()
            );
            assert_eq!(
                Some(&reply),
                r.reply.as_ref().or(Some(&Vec::new())),
                "{}",
                ctx()
            );
            assert_eq!(answered, r.answered, "{}", ctx());
            if s.fast {
                fast_total += 1;
            }
            total += 1;
        }
    }
    // Not vacuous: the plain A and AAAA queries for names with records (about a tenth of
    // what `query` makes) take the fast path.
    assert!(
        fast_total * 20 > total,
        "only {fast_total} of {total} queries took the fast path"
    );
}

#[test]
fn a_plain_query_takes_the_fast_path_and_rotates() {
    let zone = zone();
    let pools = pools(&zone, SchedulerKind::RoundRobin);
    let q = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x04test\x00\x00\x01\x00\x01";
    let (mut reply, mut answered) = (Vec::new(), Vec::new());
    let mut firsts = Vec::new();
    for _ in 0..6 {
        let s = answer_into(
            &zone,
            pools.as_slice(),
            &Incoming {
                packet: q,
                client: IpAddr::V4(Ipv4Addr::LOCALHOST),
                transport: Transport::Udp,
                random: 1,
                now: Duration::from_secs(1),
            },
            None,
            &mut reply,
            &mut answered,
        );
        assert!(s.fast, "{s:?}");
        assert_eq!(answered.len(), 3, "max_answers");
        // Header, question, then three A records whose owner points at the question.
        assert_eq!(&reply[..4], b"\xab\xcd\x85\x00");
        assert_eq!(&reply[6..8], &[0, 3]);
        assert_eq!(&reply[34..36], b"\xc0\x0c");
        firsts.push(answered[0]);
    }
    firsts.sort_unstable();
    firsts.dedup();
    assert!(firsts.len() > 1, "rr rotates the first answer: {firsts:?}");
}
