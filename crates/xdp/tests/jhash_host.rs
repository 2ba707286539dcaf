//! `bpf/include/jhash.h` compiled on the host by the system C compiler gives the core's
//! golden vectors and agrees with `fulcrum_core::hash::jhash2` on random words.
#![allow(clippy::pedantic)]

use std::process::Command;

use fulcrum_core::hash::{jhash2, FLOW_HASH_SEED};

#[test]
fn c_jhash2_equals_the_core() {
    let dir = std::env::temp_dir().join(format!("fulcrum-jhash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let src = dir.join("t.c");
    let bin = dir.join("t");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include "jhash.h"
int main(int argc, char **argv) {
    fx_u32 seed = strtoul(argv[1], 0, 0), w[16];
    int n = argc - 2;
    for (int i = 0; i < n; i++) w[i] = strtoul(argv[i + 2], 0, 0);
    printf("%u\n", fx_jhash2(w, n, seed));
    return 0;
}
"#,
    )
    .expect("write");
    let inc = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(st) = Command::new(&cc)
        .args(["-O2", "-I", inc, "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
    else {
        fulcrum_xdp::testing::require(
            "c_jhash2_equals_the_core",
            false,
            &format!("a C compiler `{cc}` (apt-get install gcc)"),
        );
        return;
    };
    assert!(st.success(), "compile jhash.h");
    let c = |seed: u32, words: &[u32]| -> u32 {
        let out = Command::new(&bin)
            .arg(seed.to_string())
            .args(words.iter().map(ToString::to_string))
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("number")
    };
    // golden vectors of crates/core/tests/golden_hash.rs
    assert_eq!(c(0, &[]), 0xdead_beef);
    assert_eq!(c(0, &[1, 2, 3, 4, 5, 6, 7]), 0x3e60_6a2c);
    assert_eq!(c(FLOW_HASH_SEED, &[0xc000_0201]), 0x67b5_4019);
    assert_eq!(c(FLOW_HASH_SEED, &[0xc612_0007, 40000]), 0x2da6_a54b);
    assert_eq!(
        c(
            FLOW_HASH_SEED,
            &[0xc612_0007, 0xc612_0001, (40000 << 16) | 80, 6]
        ),
        0x06d8_052f
    );
    let mut x = 0x1234_5678_9abc_def0_u64;
    for n in 0..=10 {
        for _ in 0..5 {
            let words: Vec<u32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u32
                })
                .collect();
            assert_eq!(
                c(FLOW_HASH_SEED, &words),
                jhash2(&words, FLOW_HASH_SEED),
                "{words:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
