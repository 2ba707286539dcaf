//! The in-kernel relay (`bpf/sockmap.c`) on real loopback sockets: bytes queued before the
//! pairing and after it arrive in order both ways, the counters match, and a FIN leaves the
//! paired socket readable with 0 bytes (how userspace notices a half-close).
#![allow(clippy::pedantic, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use fulcrum_xdp::sockmap::SockRelay;
use fulcrum_xdp::testing::require_root;

/// A connected pair: (the connecting end, the accepted end).
fn conn(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn read_exact_timeout(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn sockmap_relays_both_ways_counts_and_passes_eof() {
    if !require_root("sockmap_relays_both_ways_counts_and_passes_eof") {
        return;
    }
    let relay = SockRelay::load().expect("load sockmap.o");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // client <-> proxy_front (accepted), proxy_back <-> server (accepted)
    let (mut client, front) = conn(&l);
    let (back, mut server) = conn(&l);
    client.write_all(b"early").unwrap(); // queued before the pairing
    std::thread::sleep(Duration::from_millis(50));
    let pair = relay.pair(&front, &back).expect("pair");
    assert_eq!(read_exact_timeout(&mut server, 5), b"early");
    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let mut c2 = client.try_clone().unwrap();
    let w = std::thread::spawn(move || c2.write_all(&up2).unwrap());
    let mut s2 = server.try_clone().unwrap();
    let w2 = std::thread::spawn(move || s2.write_all(&down2).unwrap());
    assert_eq!(read_exact_timeout(&mut server, up.len()), up);
    assert_eq!(read_exact_timeout(&mut client, down.len()), down);
    w.join().unwrap();
    w2.join().unwrap();
    assert_eq!(pair.side(0).unwrap().bytes, up.len() as u64 + 5);
    assert_eq!(pair.side(1).unwrap().bytes, down.len() as u64);
    // Half-close: the proxy's front socket becomes readable with 0 bytes.
    client.shutdown(Shutdown::Write).unwrap();
    let mut f = front.try_clone().unwrap();
    f.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(f.read(&mut b).unwrap(), 0, "EOF seen on the paired socket");
    // The other direction still flows.
    server.write_all(b"after").unwrap();
    assert_eq!(read_exact_timeout(&mut client, 5), b"after");
    drop(pair);
}
