//! PROXY protocol v1 (text) and v2 (binary) headers, as `HAProxy`'s spec defines them
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>), so backends learn the
//! real client address of a proxied TCP connection.

use std::net::{IpAddr, SocketAddr};

use fulcrum_core::model::ProxyProtocol;

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

/// The header for a TCP connection from `client` to the service address `local`.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = (unmap(client), unmap(local));
    match version {
        ProxyProtocol::V1 => v1(src, dst),
        ProxyProtocol::V2 => v2(src, dst),
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()).into_bytes()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            format!("PROXY TCP6 {s} {d} {} {}\r\n", src.port(), dst.port()).into_bytes()
        }
        // Mixed families cannot be expressed: the spec's answer is UNKNOWN.
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = Vec::with_capacity(52);
    h.extend_from_slice(&V2_SIGNATURE);
    h.push(0x21); // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        _ => {
            h.push(0x00); // AF_UNSPEC: the receiver uses the connection's own addresses
            h.extend_from_slice(&0u16.to_be_bytes());
            return h;
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_ipv4_and_ipv6() {
        let h = header(ProxyProtocol::V1, sa("127.0.0.2:5555"), sa("127.0.0.1:80"));
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 80\r\n");
        let h = header(ProxyProtocol::V1, sa("[2001:db8::1]:5555"), sa("[::1]:443"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5555 443\r\n");
        let h = header(
            ProxyProtocol::V1,
            sa("[::ffff:127.0.0.9]:1"),
            sa("127.0.0.1:2"),
        );
        assert_eq!(h, b"PROXY TCP4 127.0.0.9 127.0.0.1 1 2\r\n");
    }

    #[test]
    fn v2_ipv4_bytes() {
        let h = header(ProxyProtocol::V2, sa("127.0.0.2:5555"), sa("127.0.0.1:80"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x15, 0xb3, 0, 80]);
        assert_eq!(h, want);
    }

    #[test]
    fn v2_ipv6_length() {
        let h = header(ProxyProtocol::V2, sa("[2001:db8::1]:1"), sa("[::1]:2"));
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
    }
}
