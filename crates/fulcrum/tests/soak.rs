//! The soak-and-chaos harness in its short mode: `bench/soak.py --minutes 2` against this
//! build's `fulcrum` (steady HTTP/1.1, h2, TLS, TCP and UDP load through one `fulcrum run`,
//! with reloads, backend kills and restarts, a slow backend, a 503 backend, admin API
//! changes and a token rotation on a schedule). The harness checks the goals (no failed
//! request, no reset outside a killed backend, RSS and fds flat within 5%, every event done)
//! and exits non-zero, naming the goal, when one is missed; this test fails then.
//! docs/reliability.md ("Soak and chaos") has the long runs.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::Path;
use std::process::Command;

use fulcrum_xdp::testing::{have_program, require};

#[test]
fn soak_two_minutes() {
    let test = "soak_two_minutes";
    for (tool, pkg) in [
        ("python3", "python3"),
        ("h2load", "nghttp2-client"),
        ("openssl", "openssl"),
    ] {
        if !require(
            test,
            have_program(tool),
            &format!("{tool} (apt-get install {pkg})"),
        ) {
            return;
        }
    }
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/soak.py");
    let out = Command::new("python3")
        .arg(&harness)
        .args(["--minutes", "2", "--fulcrum", env!("CARGO_BIN_EXE_fulcrum")])
        .output()
        .expect("run bench/soak.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The report, shown whether the test passes or not (cargo test --nocapture).
    println!("{stdout}");
    assert!(
        out.status.success(),
        "bench/soak.py --minutes 2 failed ({}):\n{stdout}\nstderr (tail):\n{}",
        out.status,
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stdout.contains("all goals met"),
        "the harness exited 0 without its verdict:\n{stdout}"
    );
}
