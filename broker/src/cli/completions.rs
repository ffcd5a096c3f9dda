//! `lockbroker completions SHELL`: prints a completion script for bash, zsh or fish (clap's
//! generator, so it always matches the current subcommands and flags).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to generate for, e.g. `lockbroker completions bash > /etc/bash_completion.d/lockbroker`.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionsArgs) -> ExitCode {
    let mut cmd = super::Cli::command();
    // Into a buffer first: clap_complete panics on a write error (e.g. `| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "lockbroker", &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockbroker: cannot write the completion script: {e}");
            ExitCode::FAILURE
        }
    }
}
