//! Golden vectors of the documented flow hash. The expected values come from the kernel's
//! `include/linux/jhash.h` compiled as C (and Bob Jenkins' published lookup3 vectors): if any
//! of these change, the BPF data plane and other Fulcrum instances no longer agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fulcrum_core::hash::{
    flow_hash, flow_words, hash_bytes, jhash, jhash2, FLOW_HASH_SEED, JHASH_INITVAL,
};
use fulcrum_core::model::{FlowTuple, HashKey, Proto};
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn flow(src: &str, dst: &str, proto: Proto) -> FlowTuple {
    FlowTuple {
        src: sa(src),
        dst: sa(dst),
        proto,
    }
}

#[test]
fn constants() {
    assert_eq!(JHASH_INITVAL, 0xdead_beef);
    assert_eq!(FLOW_HASH_SEED, 0x4675_6c63);
}

#[test]
fn lookup3_published_vectors() {
    // lookup3.c driver5: hashlittle() == the kernel's jhash() on little-endian CPUs.
    assert_eq!(jhash(b"", 0), 0xdead_beef);
    assert_eq!(jhash(b"", 0xdead_beef), 0xbd5b_7dde);
    assert_eq!(jhash(b"Four score and seven years ago", 0), 0x1777_0551);
    assert_eq!(jhash(b"Four score and seven years ago", 1), 0xcd62_8161);
}

#[test]
fn jhash2_vectors_from_kernel_c() {
    assert_eq!(jhash2(&[], 0), 0xdead_beef);
    assert_eq!(jhash2(&[1, 2, 3, 4, 5, 6, 7], 0), 0x3e60_6a2c);
}

#[test]
fn bytes_vectors_from_kernel_c() {
    assert_eq!(jhash(b"198.18.0.1:80", FLOW_HASH_SEED), 0x705e_672c);
    assert_eq!(hash_bytes(b"user-42"), 0x4b7d_f55e);
}

#[test]
fn flow_words_are_documented() {
    let f = flow("198.18.0.7:40000", "198.18.0.1:80", Proto::Tcp);
    assert_eq!(flow_words(&HashKey::SrcIp, &f), Some(vec![0xc612_0007]));
    assert_eq!(
        flow_words(&HashKey::SrcIpPort, &f),
        Some(vec![0xc612_0007, 40000])
    );
    assert_eq!(
        flow_words(&HashKey::FiveTuple, &f),
        Some(vec![0xc612_0007, 0xc612_0001, (40000 << 16) | 0x50, 6])
    );
    assert_eq!(flow_words(&HashKey::Header("x".into()), &f), None);
}

#[test]
fn flow_hash_vectors_from_kernel_c() {
    let f = flow("192.0.2.1:1234", "198.18.0.1:80", Proto::Tcp);
    assert_eq!(flow_hash(&HashKey::SrcIp, &f), Some(0x67b5_4019));
    let f6 = flow("[2001:db8::1]:1234", "[2001:db8::2]:80", Proto::Tcp);
    assert_eq!(flow_hash(&HashKey::SrcIp, &f6), Some(0xa497_f00c));
    let f = flow("198.18.0.7:40000", "198.18.0.1:80", Proto::Tcp);
    assert_eq!(flow_hash(&HashKey::SrcIpPort, &f), Some(0x2da6_a54b));
    assert_eq!(flow_hash(&HashKey::FiveTuple, &f), Some(0x06d8_052f));
    let f6 = flow("[2001:db8::7]:40000", "[2001:db8::1]:443", Proto::Udp);
    assert_eq!(flow_hash(&HashKey::FiveTuple, &f6), Some(0x7c53_c228));
}

#[test]
fn http_keys_have_no_flow_hash() {
    let f = flow("198.18.0.7:40000", "198.18.0.1:80", Proto::Tcp);
    assert_eq!(flow_hash(&HashKey::Header("x-user".into()), &f), None);
    assert_eq!(flow_hash(&HashKey::Cookie("sid".into()), &f), None);
}

fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

proptest! {
    #[test]
    fn v4_mapped_hashes_as_v4(s in any::<u32>(), d in any::<u32>(), sp in any::<u16>(), dp in any::<u16>(), udp in any::<bool>()) {
        let (s4, d4) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
        let proto = if udp { Proto::Udp } else { Proto::Tcp };
        let plain = FlowTuple { src: SocketAddr::new(s4.into(), sp), dst: SocketAddr::new(d4.into(), dp), proto };
        let m = FlowTuple { src: SocketAddr::new(mapped(s4), sp), dst: SocketAddr::new(mapped(d4), dp), proto };
        for key in [HashKey::SrcIp, HashKey::SrcIpPort, HashKey::FiveTuple] {
            prop_assert_eq!(flow_hash(&key, &plain), flow_hash(&key, &m));
        }
    }

    #[test]
    fn jhash2_is_jhash_of_le_bytes(words in proptest::collection::vec(any::<u32>(), 0..20), seed in any::<u32>()) {
        // lookup3: hashword() is identical to hashlittle() on little-endian machines.
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        prop_assert_eq!(jhash2(&words, seed), jhash(&bytes, seed));
    }

    #[test]
    fn v6_not_mapped_differs_from_v4(s in any::<u32>(), sp in any::<u16>()) {
        // A native IPv6 source (2001:db8::/32) hashes four words, never the IPv4 one.
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (s >> 16) as u16, s as u16);
        let a = FlowTuple { src: SocketAddr::new(Ipv4Addr::from(s).into(), sp), dst: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 80), proto: Proto::Tcp };
        let b = FlowTuple { src: SocketAddr::new(v6.into(), sp), ..a };
        prop_assert_eq!(flow_words(&HashKey::SrcIp, &b).map(|w| w.len()), Some(4));
        prop_assert_eq!(flow_words(&HashKey::SrcIp, &a).map(|w| w.len()), Some(1));
    }
}
