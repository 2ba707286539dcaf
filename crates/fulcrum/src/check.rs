//! `fulcrum check -c FILE`: validate a config and print a one-screen summary.

use std::io::Write as _;
use std::path::PathBuf;

/// Exit code for a bad or unreadable config file (contract: 2 = bad usage or bad config).
pub const EXIT_BAD_CONFIG: u8 = 2;

/// Arguments of `fulcrum check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file (TOML).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs `check`: 0 and a summary on stdout when the file is valid; 2 and every error as
/// `FILE:LINE:COL: message` (plus `  help: ...`) on stderr when it is not, or when it
/// cannot be read.
pub fn run(args: &CheckArgs) -> anyhow::Result<u8> {
    let file = args.config.display().to_string();
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: cannot read the config file: {e}");
            return Ok(EXIT_BAD_CONFIG);
        }
    };
    match crate::files::parse(&text) {
        Ok(cfg) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{file}: OK")?;
            write!(out, "{}", cfg.summary())?;
            out.flush()?;
            Ok(0)
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{}", crate::files::render(&file, &text, &errors))?;
            Ok(EXIT_BAD_CONFIG)
        }
    }
}
