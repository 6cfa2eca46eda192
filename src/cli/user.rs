//! `raftshop user add|remove|list`: the portals' users (`[auth]` in
//! cluster.toml; see `portals::auth`). Edits the users file the config
//! names; running portals read it again within a second.

use std::path::{Path, PathBuf};
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
        /// Also make a certificate naming the user, signed by the CA of
        /// `[tls] dir`, beside the users file (`NAME.user.pem`,
        /// `NAME.user.key`): a portal whose API is TLS (`[auth] tls`) takes
        /// it instead of the token.
        #[arg(long)]
        cert: bool,
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
    let auth = config.auth.clone().ok_or_else(|| {
        format!("{origin} has no [auth] table, so the portals take calls from anyone; add\n\n[auth]\nusers = \"data/users.toml\"\n\nand restart the portals")
    })?;
    let path = auth.users;
    match args.command {
        UserCommand::Add { name, roles, cert } => {
            let ca_dir = match (cert, &config.tls) {
                (false, _) => None,
                (true, Some(tls)) => Some(tls.dir.as_path()),
                (true, None) => return Err(format!("--cert needs the cluster's CA, and {origin} has no [tls] table")),
            };
            let added = add(&path, &name, &roles, ca_dir)?;
            if let Some((pem, key)) = &added.cert {
                eprintln!("user {name}'s certificate: {} and {}", pem.display(), key.display());
            }
            eprintln!("user {name} added to {}; its token, shown only now:", path.display());
            println!("{}", added.token);
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

/// What [`add`] made.
pub struct Added {
    /// The user's token, stored only hashed.
    pub token: String,
    /// The user's certificate and key files, if asked for.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// Adds user `name` with `roles` to the users file at `path` (made, with
/// its directory, if missing); with `ca_dir`, also a certificate naming
/// the user, signed by that CA, beside the file (`NAME.user.pem`,
/// `NAME.user.key`; the `.user` keeps them apart from the cluster's own
/// certificates should both share a directory).
pub fn add(path: &Path, name: &str, roles: &[Role], ca_dir: Option<&Path>) -> Result<Added, String> {
    let mut users = UsersFile::load_or_empty(path)?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let issued = match ca_dir {
        Some(ca_dir) => Some(storage_node::tls::issue_user(ca_dir, name).map_err(|e| e.to_string())?),
        None => None,
    };
    let token = users.add(name, roles, issued.as_ref().map(|issued| portals::auth::sha256_hex(&issued.der)))?;
    let cert = match issued {
        Some(issued) => {
            let files = (dir.join(format!("{name}.user.pem")), dir.join(format!("{name}.user.key")));
            std::fs::write(&files.0, issued.pem).map_err(|e| format!("cannot write {}: {e}", files.0.display()))?;
            storage_node::tls::write_private(&files.1, issued.key.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", files.1.display()))?;
            Some(files)
        }
        None => None,
    };
    users.save(path)?;
    Ok(Added { token, cert })
}
