//! The command line as a user meets it, through the real binary: `--version` and
//! `version`, shell completions, man pages, `run --help`, the log level (`--log-level`,
//! `FULCRUM_LOG`, `RUST_LOG`) and the `FULCRUM_ADMIN` / `FULCRUM_TOKEN_FILE` defaults of
//! `ctl` and `adm`.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, pool_toml, service_toml, weighted, Behaviour, Fulcrum, TcpBackend};
use fulcrum_xdp::testing::{have_program, require};

fn fulcrum() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fulcrum"));
    // The tests set what they test; nothing from the caller's environment leaks in.
    for v in [
        "FULCRUM_LOG",
        "RUST_LOG",
        "FULCRUM_ADMIN",
        "FULCRUM_TOKEN_FILE",
    ] {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = fulcrum();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_names_the_commit_the_compiler_and_what_is_built_in() {
    let o = run(&["--version"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = stdout(&o);
    let first = format!("fulcrum {}\n", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&first), "{v}");
    let commit = v
        .lines()
        .find_map(|l| l.strip_prefix("commit: "))
        .expect("a commit line");
    // The build script reads the commit with git; in a checkout it is HEAD's, elsewhere
    // "unknown" (the build never fails for it).
    let manifest = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", manifest, "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(h) => assert_eq!(commit, h, "--version names another commit than HEAD"),
        None => assert_eq!(commit, "unknown"),
    }
    for key in [
        "built with: rustc ",
        "target: ",
        "profile: ",
        "cargo features: ",
        "built in: ",
        "+xdp",
        "+tls",
        "libraries: ",
        "tokio ",
        "rustls ",
    ] {
        assert!(v.contains(key), "--version lacks {key:?}:\n{v}");
    }
    // The crypto provider named is the one the TLS code was built with.
    let tls = format!("+tls(rustls/{})", fulcrum_http::TLS_PROVIDER);
    assert!(v.contains(&tls), "--version lacks {tls:?}:\n{v}");
    // `fulcrum version` prints the same; `-V` is the one-line form.
    let o2 = run(&["version"], &[]);
    assert_eq!(o2.status.code(), Some(0));
    assert_eq!(stdout(&o2), v);
    let short = stdout(&run(&["-V"], &[]));
    assert_eq!(
        short.trim(),
        format!("fulcrum {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_are_valid_scripts_that_complete() {
    let dir = common::temp_dir("cli_completions");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell], &[]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for word in ["check", "ctl", "log-level", "completions"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        let file = dir.join(format!("fulcrum.{shell}"));
        std::fs::write(&file, &script).unwrap();
        // Each shell's own syntax check.
        let check: &[&str] = match shell {
            "bash" | "zsh" => &["-n"],
            _ => &["--no-execute"],
        };
        if require(
            "completions",
            have_program(shell),
            &format!("{shell} (apt-get install {shell})"),
        ) {
            let st = Command::new(shell).args(check).arg(&file).output().unwrap();
            assert!(
                st.status.success(),
                "{shell} rejects the script: {}",
                stderr(&st)
            );
        }
    }
    // bash: source it and ask for completions, as the shell does on TAB.
    let probe = format!(
        "source {f}; COMP_WORDS=(fulcrum ch); COMP_CWORD=1; _fulcrum fulcrum ch fulcrum; \
         echo \"${{COMPREPLY[@]}}\"; COMP_WORDS=(fulcrum run --log-l); COMP_CWORD=2; \
         _fulcrum fulcrum --log-l run; echo \"${{COMPREPLY[@]}}\"",
        f = dir.join("fulcrum.bash").display()
    );
    let o = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines, ["check", "--log-level"], "{}", stderr(&o));
    // fish: the same question through its `complete -C`.
    if have_program("fish") {
        let probe = format!(
            "source {}; complete -C 'fulcrum ch'",
            dir.join("fulcrum.fish").display()
        );
        let o = Command::new("fish").args(["-c", &probe]).output().unwrap();
        assert!(
            stdout(&o).starts_with("check\t"),
            "{}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    // An unknown shell is a usage error that names the valid ones.
    let o = run(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bash"), "{}", stderr(&o));
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let dir = common::temp_dir("cli_man").join("man1");
    let o = run(&["man", dir.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    for page in [
        "fulcrum.1",
        "fulcrum-run.1",
        "fulcrum-check.1",
        "fulcrum-ctl-status.1",
    ] {
        let p = dir.join(page);
        assert!(listed.contains(&p.to_str().unwrap()), "{page} not listed");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH "),
            "{page}: not roff"
        );
    }
    let run_page = std::fs::read_to_string(dir.join("fulcrum-run.1")).unwrap();
    for word in ["SIGHUP", "SIGUSR1", "FULCRUM_LOG", "log\\-level"] {
        assert!(run_page.contains(word), "fulcrum-run.1 lacks {word}");
    }
    let adm_page = std::fs::read_to_string(dir.join("fulcrum-adm.1")).unwrap();
    assert!(
        adm_page.contains("FULCRUM_ADMIN"),
        "fulcrum-adm.1 lacks the adm usage"
    );
    // Rendered by man(1) when it is there: the page is well-formed enough to read.
    if have_program("man") {
        let o = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.join("fulcrum-run.1"))
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("SIGTERM"), "{}", stdout(&o));
    }
}

#[test]
fn run_help_shows_the_log_level_and_the_signals() {
    let o = run(&["run", "--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let h = stdout(&o);
    for word in [
        "--log-level",
        "FULCRUM_LOG",
        "RUST_LOG",
        "SIGHUP",
        "SIGTERM",
        "SIGINT",
        "SIGUSR1",
        "reopen",
    ] {
        assert!(h.contains(word), "run --help lacks {word}:\n{h}");
    }
}

/// Starts `fulcrum run` on an admin-only config with `args` and `env`, waits until
/// `/readyz` answers, stops it with SIGTERM and returns its stderr.
async fn run_and_stop(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let admin = free_addr();
    let dir = common::temp_dir(name);
    let cfg = dir.join("fulcrum.toml");
    std::fs::write(&cfg, common::admin_toml(admin)).unwrap();
    let err_path = dir.join("stderr.log");
    let mut c = fulcrum();
    c.arg("run")
        .arg("-c")
        .arg(&cfg)
        .args(["--workers", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "exited early: {st}: {}",
                std::fs::read_to_string(&err_path).unwrap()
            );
        }
        if let Ok((200, _)) = common::http(admin, "GET", "/readyz").await {
            break;
        }
        assert!(Instant::now() < deadline, "not ready in 10 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0));
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not stop within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    std::fs::read_to_string(&err_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_comes_from_the_flag_then_fulcrum_log_then_rust_log() {
    // "fulcrum running" and "stopping" are info lines; "warn" hides them.
    let shown = |s: &str| s.contains("fulcrum running") && s.contains("stopping");
    let hidden = |s: &str| !s.contains("fulcrum running") && !s.contains("stopping");
    let s = run_and_stop("cli_log_default", &[], &[]).await;
    assert!(shown(&s), "default (info):\n{s}");
    let s = run_and_stop("cli_log_flag", &["--log-level", "warn"], &[]).await;
    assert!(hidden(&s), "--log-level warn:\n{s}");
    let s = run_and_stop("cli_log_env", &[], &[("FULCRUM_LOG", "warn")]).await;
    assert!(hidden(&s), "FULCRUM_LOG=warn:\n{s}");
    let s = run_and_stop("cli_log_rust", &[], &[("RUST_LOG", "warn")]).await;
    assert!(hidden(&s), "RUST_LOG=warn:\n{s}");
    // Precedence: the flag over FULCRUM_LOG over RUST_LOG.
    let s = run_and_stop(
        "cli_log_prec1",
        &["--log-level", "info"],
        &[("FULCRUM_LOG", "warn")],
    )
    .await;
    assert!(shown(&s), "--log-level info, FULCRUM_LOG=warn:\n{s}");
    let s = run_and_stop(
        "cli_log_prec2",
        &[],
        &[("FULCRUM_LOG", "info"), ("RUST_LOG", "warn")],
    )
    .await;
    assert!(shown(&s), "FULCRUM_LOG=info, RUST_LOG=warn:\n{s}");
    // Per-module directives work: this one silences fulcrum's own lines only.
    let s = run_and_stop(
        "cli_log_directive",
        &["--log-level", "info,fulcrum=warn"],
        &[],
    )
    .await;
    assert!(hidden(&s), "info,fulcrum=warn:\n{s}");
    // A bad variable is reported and the next source is used.
    let s = run_and_stop(
        "cli_log_badenv",
        &[],
        &[("FULCRUM_LOG", "info,=[bad"), ("RUST_LOG", "warn")],
    )
    .await;
    assert!(
        s.contains("FULCRUM_LOG") && s.contains("is not a log level") && hidden(&s),
        "bad FULCRUM_LOG:\n{s}"
    );
    // A bad flag is a usage error (exit 2) that says what is valid, before anything starts.
    let o = run(
        &[
            "run",
            "-c",
            "/nonexistent.toml",
            "--log-level",
            "info,=[bad",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--log-level"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("valid: error, warn, info"),
        "{}",
        stderr(&o)
    );
}

fn write_token(dir: &Path, token: &str) -> String {
    let f = dir.join("admin.token");
    std::fs::write(&f, format!("{token}\n")).unwrap();
    f.display().to_string()
}

/// Runs `fulcrum ARGS` in a blocking thread with `env` (the binary does blocking IO).
async fn cli(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut c = fulcrum();
        c.args(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    })
    .await
    .unwrap()
}

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn envs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_and_adm_take_the_admin_url_and_token_file_from_the_environment() {
    let b = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("cli_env");
    let good = write_token(&dir, "env-token");
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{good}\"\n\n{}{}",
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml("web", "wrr", "", &weighted(&[b.addr]))
    );
    let f = Fulcrum::start("cli_env_run", admin, &cfg, &["--workers", "1"]).await;
    let url = format!("http://{admin}");
    // Nothing listens here: a command that used it would fail to connect.
    let dead: SocketAddr = free_addr();
    let dead_url = format!("http://{dead}");

    // ctl: FULCRUM_ADMIN is the default of --admin; the flag wins over it.
    let o = cli(argv("ctl status"), envs(&[("FULCRUM_ADMIN", &url)])).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli(argv("ctl status"), envs(&[("FULCRUM_ADMIN", &dead_url)])).await;
    assert_ne!(o.status.code(), Some(0), "status reached a dead address?");
    let o = cli(
        argv(&format!("ctl --admin {url} status")),
        envs(&[("FULCRUM_ADMIN", &dead_url)]),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // ctl: a mutating call needs the token; FULCRUM_TOKEN_FILE gives it.
    let drain = format!("ctl backend drain web {}", b.addr);
    let o = cli(argv(&drain), envs(&[("FULCRUM_ADMIN", &url)])).await;
    assert_ne!(o.status.code(), Some(0), "drain without a token succeeded");
    let o = cli(
        argv(&drain),
        envs(&[("FULCRUM_ADMIN", &url), ("FULCRUM_TOKEN_FILE", &good)]),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(f.backend_state("web", b.addr).await, "draining");

    // adm: the same two variables.
    let edit = format!("adm -e -t {vip} -r {} -w 7", b.addr);
    let o = cli(argv(&edit), envs(&[("FULCRUM_ADMIN", &url)])).await;
    assert_ne!(o.status.code(), Some(0), "adm -e without a token succeeded");
    let o = cli(
        argv(&edit),
        envs(&[("FULCRUM_ADMIN", &url), ("FULCRUM_TOKEN_FILE", &good)]),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cli(argv("adm -L -n"), envs(&[("FULCRUM_ADMIN", &url)])).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listing = stdout(&o);
    let line = listing
        .lines()
        .find(|l| l.contains(&b.addr.to_string()))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(line.split_whitespace().any(|w| w == "7"), "{listing}");
    let o = cli(argv("adm -L -n"), envs(&[("FULCRUM_ADMIN", &dead_url)])).await;
    assert_ne!(o.status.code(), Some(0), "adm reached a dead address?");
    f.assert_no_panic();
}
