//! `fulcrum completions SHELL` and `fulcrum man DIR`: shell completions (`clap_complete`) and
//! man pages (`clap_mangen`), generated from the very command definitions the binary parses,
//! so they cannot fall behind it. The .deb ships both (dist/build-deb.sh).

use std::path::PathBuf;

use anyhow::Context as _;

/// Arguments of `fulcrum completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `fulcrum man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The directory to write `fulcrum.1` and one `fulcrum-SUBCOMMAND.1` per subcommand
    /// into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs, mut cmd: clap::Command) -> u8 {
    clap_complete::generate(args.shell, &mut cmd, "fulcrum", &mut std::io::stdout());
    0
}

/// Writes the man pages into `args.dir` and lists the files written on stdout.
pub fn man(args: &ManArgs, cmd: clap::Command) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create the directory {}", args.dir.display()))?;
    clap_mangen::generate_to(cmd, &args.dir)
        .with_context(|| format!("cannot write man pages into {}", args.dir.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot list {}", args.dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fulcrum") && n.ends_with(".1"))
        .collect();
    names.sort();
    for n in names {
        println!("{}", args.dir.join(n).display());
    }
    Ok(0)
}
