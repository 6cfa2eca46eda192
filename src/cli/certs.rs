//! `raftshop certs init DIR`: a development CA and a certificate for each
//! role (node, portal, operator), for a cluster's `[tls]` table.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use storage_node::tls::{self, Role};

/// `raftshop certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// The `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA (`ca.pem`, `ca.key`) and `node`, `portal` and `operator`
    /// certificates and keys in DIR, valid for 825 days. Refuses a
    /// directory that holds a CA already.
    Init {
        /// Where to write them; created if missing.
        dir: PathBuf,
    },
}

/// Runs `raftshop certs`.
pub fn run(args: CertsArgs) -> ExitCode {
    match args.command {
        CertsCommand::Init { dir } => match tls::init(&dir) {
            Ok(()) => {
                println!("CA and certificates for {} written to {}", names(), dir.display());
                println!(
                    "turn mutual TLS on with this in cluster.toml:\n\n[tls]\ndir = {:?}",
                    dir.display().to_string()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("certs init failed: {error}");
                ExitCode::from(1)
            }
        },
    }
}

fn names() -> String {
    Role::ALL.map(Role::name).join(", ")
}
