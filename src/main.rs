//! `raftshop`: the operator's command line for a raftshop cluster.
//!
//! Everything runnable lives in this package as a binary: this CLI, and thin
//! shims (`storage-node`, later `admin-portal` and `order-portal`) over the
//! library crates. The CLI starts the others as child processes (`up`) and
//! asks running nodes how they are (`status`); see [`cli`] for the commands.
//!
//! What the CLI prints on stdout is its output, meant for a person: tables,
//! the children's prefixed lines, progress. Diagnostics go through `tracing`
//! to stderr, quiet unless `RUST_LOG` asks for more. A failure ends the
//! process with one line on stderr and exit code 1. The shop's clients,
//! `admin` and `order`, print JSON for scripts instead, and exit 2 when the
//! shop could not be asked at all.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    // Warnings only by default, so the commands' own output stays readable.
    storage_node::cli::init_tracing(args.log_format, "warn");
    match cli::run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("raftshop: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause the message
/// before it already quotes (as errors that embed their source do).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn causes_are_chained_on_one_line() {
        let error = Err::<(), _>(std::io::Error::other("connection refused")).context("cannot start node-1");
        assert_eq!(one_line(&error.expect_err("failed")), "cannot start node-1: connection refused");
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_left_out() {
        let error = Err::<(), _>(std::io::Error::other("no such file")).context("cannot read c.toml: no such file");
        assert_eq!(one_line(&error.expect_err("failed")), "cannot read c.toml: no such file");
    }
}
