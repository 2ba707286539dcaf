//! What the Debian package ships: the default config passes `fulcrum check`, and
//! `dist/build-deb.sh` builds a package holding the binary, the unit, the config (as a
//! conffile), the man pages and the completions, or fails saying what is missing. (CI also
//! installs the release package with `dpkg -i` and checks the installed config: .ci/run.)
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::many_single_char_names
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fulcrum_xdp::testing::{have_program, require};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn shipped_default_config_passes_check() {
    let conf = repo().join("dist/fulcrum.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("admin: 127.0.0.1:9090"));
}

fn build_deb(out: &Path) -> Output {
    Command::new("bash")
        .arg(repo().join("dist/build-deb.sh"))
        .arg(env!("CARGO_BIN_EXE_fulcrum"))
        .arg(out)
        .env("FULCRUM_DEB_COMPRESS", "none")
        .output()
        .unwrap()
}

#[test]
fn deb_holds_binary_unit_config_man_pages_and_completions() {
    if !require(
        "deb_holds_binary_unit_config_man_pages_and_completions",
        have_program("dpkg-deb"),
        "dpkg-deb (apt-get install dpkg)",
    ) {
        return;
    }
    let dir = common::temp_dir("package_deb");
    let out = dir.join("out");
    let unit = repo().join("dist/fulcrum.service");
    let o = build_deb(&out);
    if !unit.exists() {
        // The unit file is part of the package: without it the build stops and says so.
        assert_ne!(o.status.code(), Some(0), "built without a unit file");
        assert!(
            text(&o.stderr).contains("fulcrum.service is missing"),
            "{}",
            text(&o.stderr)
        );
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let deb = PathBuf::from(text(&o.stdout).trim());
    let arch = text(
        &Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("fulcrum_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim())
    );

    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        text(&o.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "fulcrum");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));

    let x = dir.join("x");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(&deb)
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    for f in [
        "usr/bin/fulcrum",
        "usr/lib/systemd/system/fulcrum.service",
        "etc/fulcrum/fulcrum.toml",
        "usr/share/man/man1/fulcrum.1.gz",
        "usr/share/man/man1/fulcrum-run.1.gz",
        "usr/share/man/man1/fulcrum-ctl-backend-drain.1.gz",
        "usr/share/bash-completion/completions/fulcrum",
        "usr/share/zsh/vendor-completions/_fulcrum",
        "usr/share/fish/vendor_completions.d/fulcrum.fish",
        "usr/share/doc/fulcrum/configuration.md",
        "usr/share/doc/fulcrum/copyright",
        "DEBIAN/postinst",
    ] {
        assert!(x.join(f).is_file(), "the package lacks /{f}");
    }
    assert_eq!(
        std::fs::read(x.join("usr/lib/systemd/system/fulcrum.service")).unwrap(),
        std::fs::read(&unit).unwrap()
    );
    let conffiles = std::fs::read_to_string(x.join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/fulcrum/fulcrum.toml");
    // The packaged binary checks the packaged config.
    let o = Command::new(x.join("usr/bin/fulcrum"))
        .args(["check", "-c"])
        .arg(x.join("etc/fulcrum/fulcrum.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The man pages are gzip'd roff.
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(x.join("usr/share/man/man1/fulcrum-run.1.gz"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("SIGUSR1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
