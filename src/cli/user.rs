//! `raftshop user add|remove|list`: the portals' users (`[auth]` in
//! cluster.toml; see `portals::auth`). Edits the users file the config
//! names; running portals read it again within a second.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portals::auth::{Role, UsersFile};
use storage_node::ClusterConfig;

/// `raftshop user`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UserCommand,
    /// The cluster config whose `[auth] users` file to edit; defaults to
    /// ./cluster.toml, else the built-in one.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and print its new token, once: the file keeps only its
    /// hash. Creates the users file if it is missing.
    Add {
        /// 1 to 64 letters, digits, '.', '_' or '-'.
        name: String,
        /// Its roles: admin (AdminPortal), clerk (OrderPortal), reader
        /// (retrieves and the feed); repeat or separate with commas.
        #[arg(long = "role", value_enum, required = true, value_delimiter = ',')]
        roles: Vec<Role>,
    },
    /// Remove a user; its token stops working within a second.
    Remove {
        /// The user's name.
        name: String,
    },
    /// List the users and their roles.
    List,
}

/// Runs `raftshop user`.
pub fn run(args: UserArgs) -> ExitCode {
    match edit(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("user: {why}");
            ExitCode::from(1)
        }
    }
}

fn edit(args: UserArgs) -> Result<(), String> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref()).map_err(|e| e.to_string())?;
    let auth = config.auth.ok_or_else(|| {
        format!("{origin} has no [auth] table, so the portals take calls from anyone; add\n\n[auth]\nusers = \"data/users.toml\"\n\nand restart the portals")
    })?;
    let path = auth.users;
    match args.command {
        UserCommand::Add { name, roles } => {
            let mut users = UsersFile::load_or_empty(&path)?;
            let token = users.add(&name, &roles)?;
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            users.save(&path)?;
            eprintln!("user {name} added to {}; its token, shown only now:", path.display());
            println!("{token}");
        }
        UserCommand::Remove { name } => {
            let mut users = UsersFile::load(&path)?;
            users.remove(&name)?;
            users.save(&path)?;
            eprintln!("user {name} removed from {}", path.display());
        }
        UserCommand::List => {
            for user in UsersFile::load(&path)?.users {
                let roles: Vec<&str> = user.roles.iter().map(|r| r.name()).collect();
                println!("{}\t{}", user.name, roles.join(","));
            }
        }
    }
    Ok(())
}
