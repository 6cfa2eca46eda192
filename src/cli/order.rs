//! `raftshop order`: the OrderPortal's five calls, for scripts and people.
//!
//! With a verb, one call and the scriptable answer (see
//! [`answer`](super::answer)); `list` prints each of the client's orders as
//! one line of JSON as soon as it arrives, from whichever shard answers
//! first:
//!
//! ```text
//! $ raftshop order create 7 10 '[{"id":1,"quantity":3}]'
//! {"error":0}
//! $ raftshop order list 7 | jq -c '[.OID, .data.total]'
//! ["10",7.5]
//! ```
//!
//! Without a verb, a prompt for one client, as the seed's order client
//! had: `--cid 7` names the client, or the prompt asks for it first. Its
//! lines leave the client out: `create 10 [{"id":1,"quantity":3}]`, `list`.
//!
//! IDs and items are checked with the portal's own rules before the call,
//! and every write carries an idempotency key and is sent once more if its
//! outcome is unknown (see [`portal`](super::portal)). A client with more
//! orders than one call lists gets them, then a sentence saying how many
//! were left out.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portals::request::{self, Quantities};
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Id, Order};
use serde_json::Value;
use tonic::Status;

use super::answer::{self, Answer};
use super::interactive::{Session, Shell};
use super::portal::{self, Portal, PortalFlags};
use super::prompt::{Syntax, Words};
use portals::auth::PortalChannel;

/// Flags and verb of `raftshop order`.
#[derive(Debug, Args)]
pub struct OrderArgs {
    /// Where the OrderPortal is.
    #[command(flatten)]
    pub portal: PortalFlags,
    /// The client the prompt works for; only without a verb.
    #[arg(long, value_name = "CID", value_parser = portal::id_argument)]
    pub cid: Option<u64>,
    /// The call to make; without one, a prompt opens.
    #[command(subcommand)]
    pub verb: Option<OrderVerb>,
}

/// One OrderPortal call. IDs are whole numbers; data is JSON (`-`: stdin),
/// either `[{"id":PID,"quantity":N}]` or `{"products":[{"PID","quantity"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum OrderVerb {
    /// Place an order for a client: CreateOrder, e.g.
    /// `create 7 10 '[{"id":1,"quantity":3}]'`.
    Create {
        /// The client placing it.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
        /// The new order's ID.
        #[arg(value_parser = portal::id_argument)]
        oid: u64,
        /// The items as JSON.
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Show an order with names, prices and total (`null` if there is none):
    /// RetrieveOrder.
    Get {
        /// The order's ID.
        #[arg(value_parser = portal::id_argument)]
        oid: u64,
    },
    /// Set new quantities (0 removes an item; items not named stay):
    /// UpdateOrder.
    Update {
        /// The client owning it.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
        /// The order's ID.
        #[arg(value_parser = portal::id_argument)]
        oid: u64,
        /// The items as JSON, with their new quantities.
        #[arg(value_name = "JSON")]
        data: String,
    },
    /// Cancel an order, returning its stock: DeleteOrder.
    Delete {
        /// The order's ID.
        #[arg(value_parser = portal::id_argument)]
        oid: u64,
    },
    /// Every order of a client, one JSON line each: RetrieveClientOrders.
    List {
        /// The client's ID.
        #[arg(value_parser = portal::id_argument)]
        cid: u64,
    },
}

/// The order prompt's commands: the verbs, as lines, for one client.
const COMMANDS: &[Syntax] = &[
    Syntax { name: "create", args: "OID JSON", about: r#"place an order, e.g. create 10 [{"id":1,"quantity":3}]"# },
    Syntax { name: "get", args: "OID", about: "show an order with its total" },
    Syntax { name: "update", args: "OID JSON", about: "set new quantities; 0 removes an item" },
    Syntax { name: "delete", args: "OID", about: "cancel an order, returning its stock" },
    Syntax { name: "list", args: "", about: "every order of the client" },
];

impl OrderVerb {
    /// The verb a prompt line's `words` make for client `cid`.
    fn from_words(cid: u64, mut words: Words<'_>) -> Result<Self, String> {
        use OrderVerb::*;
        let verb = match words.syntax.name {
            "create" => Create { cid, oid: words.id("OID")?, data: words.json("the order's items")? },
            "get" => Get { oid: words.id("OID")? },
            "update" => Update { cid, oid: words.id("OID")?, data: words.json("the order's items")? },
            "delete" => Delete { oid: words.id("OID")? },
            "list" => List { cid },
            other => unreachable!("the order command {other} has no verb"),
        };
        words.finish()?;
        Ok(verb)
    }

    /// The JSON data the verb sends, if it sends any.
    fn data_mut(&mut self) -> Option<&mut String> {
        match self {
            OrderVerb::Create { data, .. } | OrderVerb::Update { data, .. } => Some(data),
            OrderVerb::Get { .. } | OrderVerb::Delete { .. } | OrderVerb::List { .. } => None,
        }
    }

    /// What happened when the call succeeded: `order 10 created`.
    pub fn done(&self) -> String {
        match self {
            OrderVerb::Create { oid, cid, .. } => format!("order {oid} created for client {cid}"),
            OrderVerb::Update { oid, .. } => format!("order {oid} updated"),
            OrderVerb::Delete { oid } => format!("order {oid} deleted"),
            OrderVerb::Get { oid } => format!("order {oid}"),
            OrderVerb::List { cid } => format!("orders of client {cid}"),
        }
    }

    /// The portal's own check of the verb's items: a 400 refusal if it
    /// would refuse them.
    fn check(&self) -> Result<(), Answer> {
        match self {
            OrderVerb::Create { cid, oid, data } => request::order_items(*oid, *cid, data, Quantities::Positive),
            OrderVerb::Update { cid, oid, data } => request::order_items(*oid, *cid, data, Quantities::NonNegative),
            OrderVerb::Get { .. } | OrderVerb::Delete { .. } | OrderVerb::List { .. } => Ok(Vec::new()),
        }
        .map(drop)
        .map_err(portal::refused)
    }

    /// Makes the call through `portal`: checked first, with a fresh
    /// idempotency key, once more with the same key if the outcome is
    /// unknown; `list` hands each order to `on_order` as it arrives.
    pub async fn call(
        &self,
        portal: &mut OrderPortalClient<PortalChannel>,
        on_order: &mut dyn FnMut(&Value),
    ) -> Result<Answer, Status> {
        if let Err(refused) = self.check() {
            return Ok(refused);
        }
        let key = portal::idempotency_key();
        let answer = self.attempt(portal, &key, on_order).await;
        if portal::once_more(&answer) {
            return self.attempt(portal, &key, on_order).await;
        }
        answer
    }

    /// One attempt of the call, writes carrying `key`.
    async fn attempt(
        &self,
        portal: &mut OrderPortalClient<PortalChannel>,
        key: &str,
        on_order: &mut dyn FnMut(&Value),
    ) -> Result<Answer, Status> {
        let order = |cid: &u64, oid: &u64, data: &String| {
            portal::keyed(Order { oid: oid.to_string(), cid: cid.to_string(), data: data.clone() }, key)
        };
        let id = |id: &u64| Id { id: id.to_string() };
        let reply = match self {
            OrderVerb::Create { cid, oid, data } => portal.create_order(order(cid, oid, data)).await?,
            OrderVerb::Update { cid, oid, data } => portal.update_order(order(cid, oid, data)).await?,
            OrderVerb::Delete { oid } => portal.delete_order(portal::keyed(id(oid), key)).await?,
            OrderVerb::Get { oid } => {
                let found = portal.retrieve_order(id(oid)).await?.into_inner();
                let ids = [("OID", found.oid.as_str()), ("CID", found.cid.as_str())];
                return Ok(Answer::retrieved(&ids, &found.data, format!("order {oid}")));
            }
            OrderVerb::List { cid } => {
                let mut stream = portal.retrieve_client_orders(id(cid)).await?.into_inner();
                let mut count = 0;
                while let Some(found) = stream.message().await? {
                    on_order(&answer::entity(&[("OID", &found.oid), ("CID", &found.cid)], &found.data));
                    count += 1;
                }
                return Ok(Answer::Listed(count));
            }
        }
        .into_inner();
        Ok(Answer::from_reply(reply.error, reply.description))
    }
}

/// The order prompt: one portal, one client.
struct OrderShell {
    /// The OrderPortal's client.
    client: OrderPortalClient<PortalChannel>,
    /// The portal, for sentences.
    portal: Portal,
    /// The client every line works for.
    cid: u64,
}

impl Shell for OrderShell {
    type Call = OrderVerb;
    const COMMANDS: &'static [Syntax] = COMMANDS;

    fn prompt(&self) -> String {
        format!("order (client {})> ", self.cid)
    }

    fn call(&self, words: Words<'_>) -> Result<OrderVerb, String> {
        OrderVerb::from_words(self.cid, words)
    }

    async fn perform(&mut self, verb: OrderVerb, out: &mut dyn Write) -> io::Result<()> {
        let mut written = Ok(());
        let mut print = |order: &Value| {
            if written.is_ok() {
                written = writeln!(out, "{}", answer::pretty(order));
            }
        };
        let answer = verb.call(&mut self.client, &mut print).await;
        written?;
        let answer = answer.unwrap_or_else(|s| Answer::from_status(&s, &self.portal.described));
        writeln!(out, "{}", answer.for_person(&verb.done()))
    }
}

/// Runs `raftshop order`.
pub async fn run(args: OrderArgs) -> ExitCode {
    let portal = match args.portal.portal("order", |p| p.order) {
        Ok(portal) => portal,
        Err(why) => return portal::cannot_start(&why),
    };
    let mut client = OrderPortalClient::new(portal.channel.clone());
    let Some(mut verb) = args.verb else { return prompt(client, portal, args.cid).await };
    if args.cid.is_some() {
        return portal::cannot_start("--cid is for the prompt; a verb takes the client's ID as its argument");
    }
    if let Some(data) = verb.data_mut() {
        match portal::data_argument(data) {
            Ok(text) => *data = text,
            Err(why) => return portal::cannot_start(&why),
        }
    }
    let answer = verb.call(&mut client, &mut |order| println!("{order}")).await;
    portal::report(&answer.unwrap_or_else(|s| Answer::from_status(&s, &portal.described)))
}

/// The prompt for client `cid`, asked for first if not given.
async fn prompt(client: OrderPortalClient<PortalChannel>, portal: Portal, cid: Option<u64>) -> ExitCode {
    let mut session = Session::stdio();
    let cid = match cid {
        Some(cid) => Some(cid),
        None => session.ask_id("client ID").await.unwrap_or(None),
    };
    let Some(cid) = cid else { return ExitCode::SUCCESS };
    let banner = format!("raftshop order for client {cid}, talking to {}", portal.described);
    match session.run(&mut OrderShell { client, portal, cid }, &banner).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => portal::cannot_start(&format!("the session ended: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};
    use crate::cli::prompt::{self, Line};

    fn parse(args: &[&str]) -> Result<OrderArgs, clap::Error> {
        let cli = Cli::try_parse_from(["raftshop", "order"].iter().chain(args).copied())?;
        match cli.command {
            Command::Order(order) => Ok(order),
            other => panic!("expected order, got {other:?}"),
        }
    }

    fn line(cid: u64, text: &str) -> Result<OrderVerb, String> {
        match prompt::parse(text, COMMANDS)? {
            Line::Command(words) => OrderVerb::from_words(cid, words),
            other => panic!("{text:?} is not a command: {other:?}"),
        }
    }

    #[test]
    fn verbs_name_the_client_on_the_command_line() {
        let items = r#"[{"id":1,"quantity":3}]"#;
        let order = parse(&["create", "7", "10", items]).expect("parses");
        assert_eq!(order.verb, Some(OrderVerb::Create { cid: 7, oid: 10, data: items.into() }));
        assert_eq!(parse(&["list", "7"]).expect("parses").verb, Some(OrderVerb::List { cid: 7 }));
        assert_eq!(parse(&["delete", "10"]).expect("parses").verb, Some(OrderVerb::Delete { oid: 10 }));
        assert!(parse(&["create", "7", "10"]).is_err(), "no items");
        assert!(parse(&["list"]).is_err(), "no client");
    }

    #[test]
    fn the_prompt_is_opened_with_or_without_a_client() {
        let order = parse(&["--cid", "7"]).expect("parses");
        assert_eq!((order.cid, order.verb), (Some(7), None));
        assert_eq!(parse(&[]).expect("parses").cid, None);
    }

    #[test]
    fn prompt_lines_leave_the_client_out() {
        let items = r#"[{"id": 1, "quantity": 3}]"#;
        assert_eq!(
            line(7, &format!("create 10 {items}")),
            Ok(OrderVerb::Create { cid: 7, oid: 10, data: items.into() })
        );
        assert_eq!(line(7, "update 10 []"), Ok(OrderVerb::Update { cid: 7, oid: 10, data: "[]".into() }));
        assert_eq!(line(7, "get 10"), Ok(OrderVerb::Get { oid: 10 }));
        assert_eq!(line(7, "delete 10"), Ok(OrderVerb::Delete { oid: 10 }));
        assert_eq!(line(7, "list"), Ok(OrderVerb::List { cid: 7 }));
    }

    #[test]
    fn prompt_mistakes_are_sentences() {
        assert_eq!(line(7, "list 8"), Err(r#"list takes nothing more, but got "8" (usage: list)"#.into()));
        assert_eq!(line(7, "create 10"), Err("create needs the order's items as JSON (usage: create OID JSON)".into()));
        assert_eq!(line(7, "get x"), Err(r#"OID must be a decimal integer, got "x""#.into()));
    }

    #[test]
    fn items_the_portal_would_refuse_are_refused_without_a_call() {
        let lines: Vec<String> = (1..=101).map(|pid| format!(r#"{{"id":{pid},"quantity":1}}"#)).collect();
        let verb = OrderVerb::Create { cid: 7, oid: 10, data: format!("[{}]", lines.join(",")) };
        match verb.check() {
            Err(Answer::Refused { code: 400, description }) => {
                assert!(description.contains("at most 100"), "{description}")
            }
            other => panic!("expected a 400, got {other:?}"),
        }
        let zero = r#"[{"id":1,"quantity":0}]"#;
        assert!(OrderVerb::Create { cid: 7, oid: 10, data: zero.into() }.check().is_err());
        assert_eq!(OrderVerb::Update { cid: 7, oid: 10, data: zero.into() }.check(), Ok(()), "0 removes a line");
    }

    #[test]
    fn successes_read_as_sentences() {
        let created = OrderVerb::Create { cid: 7, oid: 10, data: String::new() };
        assert_eq!(created.done(), "order 10 created for client 7");
        assert_eq!(OrderVerb::Delete { oid: 10 }.done(), "order 10 deleted");
    }
}
