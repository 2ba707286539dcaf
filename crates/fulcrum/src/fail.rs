//! The binary's one failure type for subcommands that choose their exit code (`ctl`, `adm`):
//! the exit code and the message printed on stderr. Every other subcommand returns an
//! `anyhow::Error`, which `main` prints with [`EXIT_FAILURE`].

/// Exit code of a runtime failure (the API refused, could not be reached, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (bad arguments), as clap's.
pub const EXIT_USAGE: u8 = 2;

/// A failure with its exit code and its message (printed as is).
#[derive(Debug, PartialEq, Eq)]
pub struct Fail(pub u8, pub String);
