//! `raftshop admin`: the AdminPortal's eight calls, for scripts and people.
//!
//! With a verb, one call and the scriptable answer (see
//! [`answer`](super::answer)); JSON given as `-` is read from stdin:
//!
//! ```text
//! $ raftshop admin create-client 7 '{"name":"Ana"}'
//! {"error":0}
//! $ raftshop admin get-client 7 | jq -r .data.name
//! Ana
//! $ raftshop admin delete-client 9
//! {"error":404,"description":"client 9 does not exist"}
//! raftshop: client 9 does not exist (404)
//! ```
//!
//! Without a verb, a prompt taking the same verbs as lines
//! (`create-client 7 {"name": "Ana"}`), see [`interactive`](super::interactive).
//!
//! IDs and data are checked with the portal's own rules before the call
//! (a 400 with the portal's sentence, and no call), and every write carries
//! an idempotency key and is sent once more if its outcome is unknown (see
//! [`portal`](super::portal)).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portals::request;
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::{Client, Id, Product};
use tonic::Status;

use super::answer::Answer;
use super::interactive::{Session, Shell};
use super::portal::{self, Portal, PortalFlags};
use super::prompt::{Syntax, Words};
use portals::auth::PortalChannel;

/// Flags and verb of `raftshop admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Where the AdminPortal is.
    #[command(flatten)]
    pub portal: PortalFlags,
    /// The call to make; without one, a prompt opens.
    #[command(subcommand)]
    pub verb: Option<AdminVerb>,
}

/// One AdminPortal call. IDs are whole numbers; data is JSON (`-`: stdin).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminVerb {
    /// Add a client: CreateClient, e.g. `create-client 7 '{"name":"Ana"}'`.
    CreateClient {
        /// The client's ID.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
        /// The client as JSON, with at least a "name".
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Show a client as JSON (`null` if there is none): RetrieveClient.
    GetClient {
        /// The client's ID.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
    },
    /// Replace a client's data: UpdateClient.
    UpdateClient {
        /// The client's ID.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
        /// The client as JSON, with at least a "name".
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Remove a client that has no orders: DeleteClient.
    DeleteClient {
        /// The client's ID.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
    },
    /// Add a product: CreateProduct, e.g.
    /// `create-product 3 '{"name":"pen","price":2.5,"quantity":8}'`.
    CreateProduct {
        /// The product's ID.
        #[arg(value_parser = portal::id_argument)]
        pid: u64,
        /// The product as JSON: "name", "price", "quantity".
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Show a product as JSON (`null` if there is none): RetrieveProduct.
    GetProduct {
        /// The product's ID.
        #[arg(value_parser = portal::id_argument)]
        pid: u64,
    },
    /// Replace a product's data and stock: UpdateProduct.
    UpdateProduct {
        /// The product's ID.
        #[arg(value_parser = portal::id_argument)]
        pid: u64,
        /// The product as JSON: "name", "price", "quantity".
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Remove a product no order holds: DeleteProduct.
    DeleteProduct {
        /// The product's ID.
        #[arg(value_parser = portal::id_argument)]
        pid: u64,
    },
}

/// The admin prompt's commands: the verbs, as lines.
const COMMANDS: &[Syntax] = &[
    Syntax { name: "create-client", args: "CID JSON", about: r#"add a client, e.g. create-client 7 {"name":"Ana"}"# },
    Syntax { name: "get-client", args: "CID", about: "show a client" },
    Syntax { name: "update-client", args: "CID JSON", about: "replace a client's data" },
    Syntax { name: "delete-client", args: "CID", about: "remove a client that has no orders" },
    Syntax {
        name: "create-product",
        args: "PID JSON",
        about: r#"add a product, e.g. create-product 3 {"name":"pen","price":2.5,"quantity":8}"#,
    },
    Syntax { name: "get-product", args: "PID", about: "show a product" },
    Syntax { name: "update-product", args: "PID JSON", about: "replace a product's data and stock" },
    Syntax { name: "delete-product", args: "PID", about: "remove a product no order holds" },
];

impl AdminVerb {
    /// The verb a prompt line's `words` make.
    fn from_words(mut words: Words<'_>) -> Result<Self, String> {
        use AdminVerb::*;
        let verb = match words.syntax.name {
            "create-client" => CreateClient { cid: words.id("CID")?, data: words.json("the client")? },
            "get-client" => GetClient { cid: words.id("CID")? },
            "update-client" => UpdateClient { cid: words.id("CID")?, data: words.json("the client")? },
            "delete-client" => DeleteClient { cid: words.id("CID")? },
            "create-product" => CreateProduct { pid: words.id("PID")?, data: words.json("the product")? },
            "get-product" => GetProduct { pid: words.id("PID")? },
            "update-product" => UpdateProduct { pid: words.id("PID")?, data: words.json("the product")? },
            "delete-product" => DeleteProduct { pid: words.id("PID")? },
            other => unreachable!("the admin command {other} has no verb"),
        };
        words.finish()?;
        Ok(verb)
    }

    /// The JSON data the verb sends, if it sends any.
    fn data_mut(&mut self) -> Option<&mut String> {
        use AdminVerb::*;
        match self {
            CreateClient { data, .. } | UpdateClient { data, .. } => Some(data),
            CreateProduct { data, .. } | UpdateProduct { data, .. } => Some(data),
            GetClient { .. } | DeleteClient { .. } | GetProduct { .. } | DeleteProduct { .. } => None,
        }
    }

    /// What happened when the call succeeded: `client 7 created`.
    pub fn done(&self) -> String {
        use AdminVerb::*;
        match self {
            CreateClient { cid, .. } => format!("client {cid} created"),
            UpdateClient { cid, .. } => format!("client {cid} updated"),
            DeleteClient { cid } => format!("client {cid} deleted"),
            CreateProduct { pid, .. } => format!("product {pid} created"),
            UpdateProduct { pid, .. } => format!("product {pid} updated"),
            DeleteProduct { pid } => format!("product {pid} deleted"),
            GetClient { cid } => format!("client {cid}"),
            GetProduct { pid } => format!("product {pid}"),
        }
    }

    /// The portal's own check of the verb's data: a 400 refusal if it would
    /// refuse it.
    fn check(&self) -> Result<(), Answer> {
        use AdminVerb::*;
        match self {
            CreateClient { cid, data } | UpdateClient { cid, data } => request::client_document(*cid, data).map(drop),
            CreateProduct { pid, data } | UpdateProduct { pid, data } => request::product(*pid, data).map(drop),
            GetClient { .. } | DeleteClient { .. } | GetProduct { .. } | DeleteProduct { .. } => Ok(()),
        }
        .map_err(portal::refused)
    }

    /// Makes the call through `portal`: checked first, with a fresh
    /// idempotency key, once more with the same key if the outcome is
    /// unknown.
    pub async fn call(&self, portal: &mut AdminPortalClient<PortalChannel>) -> Result<Answer, Status> {
        if let Err(refused) = self.check() {
            return Ok(refused);
        }
        let key = portal::idempotency_key();
        let answer = self.attempt(portal, &key).await;
        if portal::once_more(&answer) {
            return self.attempt(portal, &key).await;
        }
        answer
    }

    /// One attempt of the call, writes carrying `key`.
    async fn attempt(&self, portal: &mut AdminPortalClient<PortalChannel>, key: &str) -> Result<Answer, Status> {
        use AdminVerb::*;
        let client = |cid: &u64, data: &String| portal::keyed(Client { cid: cid.to_string(), data: data.clone() }, key);
        let product =
            |pid: &u64, data: &String| portal::keyed(Product { pid: pid.to_string(), data: data.clone() }, key);
        let id = |id: &u64| Id { id: id.to_string() };
        let reply = match self {
            CreateClient { cid, data } => portal.create_client(client(cid, data)).await?,
            UpdateClient { cid, data } => portal.update_client(client(cid, data)).await?,
            DeleteClient { cid } => portal.delete_client(portal::keyed(id(cid), key)).await?,
            CreateProduct { pid, data } => portal.create_product(product(pid, data)).await?,
            UpdateProduct { pid, data } => portal.update_product(product(pid, data)).await?,
            DeleteProduct { pid } => portal.delete_product(portal::keyed(id(pid), key)).await?,
            GetClient { cid } => {
                let found = portal.retrieve_client(id(cid)).await?.into_inner();
                return Ok(Answer::retrieved(&[("CID", &found.cid)], &found.data, format!("client {cid}")));
            }
            GetProduct { pid } => {
                let found = portal.retrieve_product(id(pid)).await?.into_inner();
                return Ok(Answer::retrieved(&[("PID", &found.pid)], &found.data, format!("product {pid}")));
            }
        }
        .into_inner();
        Ok(Answer::from_reply(reply.error, reply.description))
    }
}

/// The admin prompt: one portal, its verbs as lines.
struct AdminShell {
    /// The AdminPortal's client.
    client: AdminPortalClient<PortalChannel>,
    /// The portal, for sentences.
    portal: Portal,
}

impl Shell for AdminShell {
    type Call = AdminVerb;
    const COMMANDS: &'static [Syntax] = COMMANDS;

    fn prompt(&self) -> String {
        "admin> ".into()
    }

    fn call(&self, words: Words<'_>) -> Result<AdminVerb, String> {
        AdminVerb::from_words(words)
    }

    async fn perform(&mut self, verb: AdminVerb, out: &mut dyn Write) -> io::Result<()> {
        let answer =
            verb.call(&mut self.client).await.unwrap_or_else(|s| Answer::from_status(&s, &self.portal.described));
        writeln!(out, "{}", answer.for_person(&verb.done()))
    }
}

/// Runs `raftshop admin`.
pub async fn run(args: AdminArgs) -> ExitCode {
    let portal = match args.portal.portal("admin", |p| p.admin) {
        Ok(portal) => portal,
        Err(why) => return portal::cannot_start(&why),
    };
    let mut client = AdminPortalClient::new(portal.channel.clone());
    let Some(mut verb) = args.verb else {
        let mut shell = AdminShell { client, portal };
        let banner = format!("raftshop admin, talking to {}", shell.portal.described);
        return match Session::stdio().run(&mut shell, &banner).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => portal::cannot_start(&format!("the session ended: {error}")),
        };
    };
    if let Some(data) = verb.data_mut() {
        match portal::data_argument(data) {
            Ok(text) => *data = text,
            Err(why) => return portal::cannot_start(&why),
        }
    }
    let answer = verb.call(&mut client).await.unwrap_or_else(|s| Answer::from_status(&s, &portal.described));
    portal::report(&answer)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};
    use crate::cli::prompt::{self, Line};

    fn parse(args: &[&str]) -> Result<AdminArgs, clap::Error> {
        let cli = Cli::try_parse_from(["raftshop", "admin"].iter().chain(args).copied())?;
        match cli.command {
            Command::Admin(admin) => Ok(admin),
            other => panic!("expected admin, got {other:?}"),
        }
    }

    fn line(text: &str) -> Result<AdminVerb, String> {
        match prompt::parse(text, COMMANDS)? {
            Line::Command(words) => AdminVerb::from_words(words),
            other => panic!("{text:?} is not a command: {other:?}"),
        }
    }

    #[test]
    fn verbs_take_ids_and_json_on_the_command_line() {
        let admin = parse(&["--addr", "127.0.0.1:1", "create-client", "7", r#"{"name":"Ana"}"#]).expect("parses");
        assert_eq!(admin.portal.addr.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(admin.verb, Some(AdminVerb::CreateClient { cid: 7, data: r#"{"name":"Ana"}"#.into() }));
        assert_eq!(parse(&["get-product", "3"]).expect("parses").verb, Some(AdminVerb::GetProduct { pid: 3 }));
        assert_eq!(parse(&[]).expect("a prompt").verb, None);
    }

    #[test]
    fn bad_ids_missing_data_and_both_addresses_are_usage_errors() {
        assert!(parse(&["get-client", "seven"]).is_err());
        assert!(parse(&["get-client", "-1"]).is_err());
        assert!(parse(&["create-client", "7"]).is_err());
        assert!(parse(&["--addr", "a:1", "--config", "c.toml", "get-client", "7"]).is_err());
    }

    #[test]
    fn every_prompt_command_makes_its_verb() {
        for syntax in COMMANDS {
            let example = syntax.args.replace("CID", "7").replace("PID", "7").replace("JSON", r#"{"name": "x y"}"#);
            let verb = line(&format!("{} {example}", syntax.name)).unwrap_or_else(|e| panic!("{}: {e}", syntax.name));
            let flag_form = parse(&[syntax.name, "7", r#"{"name": "x y"}"#][..1 + syntax.args.split(' ').count()]);
            assert_eq!(Some(verb), flag_form.expect("the verb parses on the command line too").verb, "{}", syntax.name);
        }
    }

    #[test]
    fn prompt_mistakes_are_sentences() {
        assert_eq!(line("get-client"), Err("get-client needs the CID (usage: get-client CID)".into()));
        assert_eq!(
            line("update-product 3"),
            Err("update-product needs the product as JSON (usage: update-product PID JSON)".into())
        );
    }

    #[test]
    fn data_the_portal_would_refuse_is_refused_without_a_call() {
        let over = storage_node::limits::MAX_QUANTITY + 1;
        let verb =
            AdminVerb::CreateProduct { pid: 3, data: format!(r#"{{"name":"pen","price":2,"quantity":{over}}}"#) };
        match verb.check() {
            Err(Answer::Refused { code: 400, description }) => {
                assert!(description.contains("over the limit"), "{description}")
            }
            other => panic!("expected a 400, got {other:?}"),
        }
        assert!(AdminVerb::UpdateClient { cid: 7, data: "{}".into() }.check().is_err(), "no name");
        assert_eq!(AdminVerb::CreateClient { cid: 7, data: r#"{"name":"Ana"}"#.into() }.check(), Ok(()));
        assert!(parse(&["get-client", &"1".repeat(21)]).is_err(), "an ID of 21 digits");
    }

    #[test]
    fn successes_read_as_sentences() {
        assert_eq!(AdminVerb::DeleteClient { cid: 7 }.done(), "client 7 deleted");
        assert_eq!(AdminVerb::UpdateProduct { pid: 3, data: String::new() }.done(), "product 3 updated");
    }
}
