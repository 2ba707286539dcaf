//! Provides the BPF objects to `include_bytes_aligned!` in `$OUT_DIR`.
//!
//! With clang on the PATH the programs are compiled from `bpf/` (`bpf/build.sh`: `clang -O2
//! -g -target bpf`, then `llvm-strip -g`, which keeps BTF). Without clang the committed
//! objects in `bpf/obj/` are used, so `cargo build` never needs clang; `.ci/build-bpf.sh`
//! fails when the committed objects differ from a fresh clang build. Set
//! `FULCRUM_BPF_PREBUILT=1` to always use the committed objects.

use std::path::{Path, PathBuf};
use std::process::Command;

const OBJECTS: [&str; 4] = ["xdp_lb.o", "xdp_lb_state.o", "decap.o", "sockmap.o"];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf = Path::new("bpf");
    for f in [
        "build.sh",
        "xdp_lb.c",
        "decap.c",
        "sockmap.c",
        "include/types.h",
        "include/parsing.h",
        "include/jhash.h",
        "include/csum.h",
        "include/encap.h",
        "include/nat.h",
        "include/icmp.h",
        "include/icmp_err.h",
        "obj/xdp_lb.o",
        "obj/xdp_lb_state.o",
        "obj/decap.o",
        "obj/sockmap.o",
    ] {
        println!("cargo:rerun-if-changed=bpf/{f}");
    }
    println!("cargo:rerun-if-env-changed=FULCRUM_BPF_PREBUILT");
    let prebuilt = std::env::var_os("FULCRUM_BPF_PREBUILT").is_some_and(|v| v == "1");
    let have_clang = !prebuilt
        && Command::new("clang")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("llvm-strip")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if have_clang {
        let status = Command::new("sh")
            .arg(bpf.join("build.sh"))
            .arg(&out)
            .status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
        println!("cargo:warning=clang failed to build the BPF programs; using the committed objects in bpf/obj");
    }
    for o in OBJECTS {
        std::fs::copy(bpf.join("obj").join(o), out.join(o)).expect("committed BPF object");
    }
}
