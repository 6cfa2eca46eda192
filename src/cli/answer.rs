//! What the shop answered to one call of `raftshop admin` or `raftshop
//! order`, and the forms the CLI gives it, all without I/O.
//!
//! Every call ends in an [`Answer`]: done, refused with an API code, an
//! entity found or missing, a list already streamed, or no answer at all.
//! From it come:
//!
//! - the scriptable line on stdout ([`Answer::script_line`]): `{"error":0}`,
//!   `{"error":404,"description":"client 9 does not exist"}`, the entity as
//!   `{"CID":"7","data":{...}}`, or `null` for a missing one, so `jq` works
//!   (where entities are expected, a refusal prints nothing);
//! - the sentence for stderr when the call failed ([`Answer::failure`]):
//!   `client 9 does not exist (404)`;
//! - the exit code ([`Answer::exit_code`]): 0 success, 1 the shop said no
//!   or the entity is missing, 2 no answer (as for usage errors);
//! - the prompt's reply for a person ([`Answer::for_person`]).
//!
//! A retrieve's `data` is JSON in a string on the wire; here it is parsed,
//! so the object nests (a `data` that is not JSON stays a string).

use serde_json::{json, Map, Value};
use tonic::{Code, Status};

/// Exit code of a call the shop carried out.
pub const EXIT_OK: u8 = 0;
/// Exit code of a call the shop refused, or of a retrieve of nothing.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code when the shop could not be asked: transport failure, no
/// quorum, a deadline, or a command line that makes no sense.
pub const EXIT_NO_ANSWER: u8 = 2;

/// The outcome of one call, as the CLI reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The shop made the change (`Reply.error` 0).
    Done,
    /// The shop refused, with the API's code and its reason.
    Refused {
        /// The API's code: 400, 404, 500, 503.
        code: i32,
        /// The shop's sentence saying why.
        description: String,
    },
    /// The portal refused a retrieve or a list with a gRPC status (a
    /// malformed ID, a list of a missing client, a list cut at its cap),
    /// with its API code; stdout gets nothing, since it stands where
    /// entities would be.
    Rejected {
        /// The API's code: 400, 404, 413, 500.
        code: i32,
        /// The portal's sentence saying why.
        description: String,
    },
    /// A retrieve found the entity: its object, as printed.
    Found(Value),
    /// A retrieve answered the zero object; names what is missing
    /// (`client 9`).
    Missing(String),
    /// A list ended after this many entities, each printed as it came.
    Listed(usize),
    /// No answer from the shop; the sentence says from where and why.
    Unreachable(String),
}

impl Answer {
    /// The answer a `Reply` carries.
    pub fn from_reply(error: i32, description: Option<String>) -> Self {
        match error {
            0 => Answer::Done,
            code => Answer::Refused {
                code,
                description: description.filter(|d| !d.is_empty()).unwrap_or_else(|| "the shop gave no reason".into()),
            },
        }
    }

    /// The answer a gRPC status carries: the portal's refusals of a
    /// retrieve (a malformed ID, a list of a missing client, a list longer
    /// than one call returns) keep their API code, and a refusal of the
    /// caller (`[auth]`: no token 401, the wrong role 403) gets the HTTP
    /// one; anything else means `portal` (`the admin portal at ADDR`) gave
    /// no answer.
    pub fn from_status(status: &Status, portal: &str) -> Self {
        let code = match status.code() {
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::ResourceExhausted => 413,
            Code::Internal => 500,
            _ => return Answer::Unreachable(format!("no answer from {portal}: {}", status_reason(status))),
        };
        Answer::Rejected { code, description: status.message().to_owned() }
    }

    /// The answer to a retrieve: the entity named by its `ids` (the first is
    /// its own) and `data`, or [`Missing`](Answer::Missing) `what` for the
    /// zero object (ID `"0"`, empty `data`).
    pub fn retrieved(ids: &[(&str, &str)], data: &str, what: String) -> Self {
        assert!(!ids.is_empty(), "an entity has at least its own ID");
        if ids[0].1 == "0" && data.is_empty() {
            Answer::Missing(what)
        } else {
            Answer::Found(entity(ids, data))
        }
    }

    /// The line for stdout in scriptable mode, if the answer has one (a
    /// list's entities were printed as they came; no answer prints nothing).
    pub fn script_line(&self) -> Option<String> {
        match self {
            Answer::Done => Some(reply_line(0, None)),
            Answer::Refused { code, description } => Some(reply_line(*code, Some(description))),
            Answer::Found(object) => Some(object.to_string()),
            Answer::Missing(_) => Some(Value::Null.to_string()),
            Answer::Rejected { .. } | Answer::Listed(_) | Answer::Unreachable(_) => None,
        }
    }

    /// The sentence saying why the call failed, or `None` if it did not.
    pub fn failure(&self) -> Option<String> {
        match self {
            Answer::Refused { code, description } | Answer::Rejected { code, description } => {
                Some(format!("{description} ({code})"))
            }
            Answer::Missing(what) => Some(format!("{what} does not exist")),
            Answer::Unreachable(why) => Some(why.clone()),
            Answer::Done | Answer::Found(_) | Answer::Listed(_) => None,
        }
    }

    /// The process's exit code after this answer.
    pub fn exit_code(&self) -> u8 {
        match self {
            Answer::Done | Answer::Found(_) | Answer::Listed(_) => EXIT_OK,
            Answer::Refused { .. } | Answer::Rejected { .. } | Answer::Missing(_) => EXIT_REFUSED,
            Answer::Unreachable(_) => EXIT_NO_ANSWER,
        }
    }

    /// The reply at the prompt: `done` (`client 7 created`) on success, the
    /// entity as indented JSON, how many a list had, or the failure.
    pub fn for_person(&self, done: &str) -> String {
        match self {
            Answer::Done => done.to_owned(),
            Answer::Found(object) => pretty(object),
            Answer::Listed(0) => "no orders".to_owned(),
            Answer::Listed(1) => "1 order".to_owned(),
            Answer::Listed(n) => format!("{n} orders"),
            Answer::Refused { .. } | Answer::Rejected { .. } | Answer::Missing(_) | Answer::Unreachable(_) => {
                self.failure().expect("a failed answer has a sentence")
            }
        }
    }
}

/// A `Reply` as one line of JSON, `error` first, as the proto has it.
fn reply_line(error: i32, description: Option<&str>) -> String {
    /// The fields of a `Reply`, in the proto's order.
    #[derive(serde::Serialize)]
    struct ReplyLine<'a> {
        /// 0 for success, else the API's code.
        error: i32,
        /// Why it failed; absent on success.
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
    }
    serde_json::to_string(&ReplyLine { error, description }).expect("a reply always serializes")
}

/// An entity's object for output: its IDs as strings, then its `data`
/// parsed (kept as a string if it is not JSON).
pub fn entity(ids: &[(&str, &str)], data: &str) -> Value {
    let mut object: Map<String, Value> = ids.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let data = serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()));
    object.insert("data".into(), data);
    Value::Object(object)
}

/// `value` as indented JSON, for people.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value always serializes")
}

/// Why a status came without an answer: its message and the causes behind
/// it (a refused connection is a cause of tonic's "transport error").
fn status_reason(status: &Status) -> String {
    let mut reason = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let text = error.to_string();
        if !reason.contains(&text) {
            reason = if reason.is_empty() { text } else { format!("{reason}: {text}") };
        }
        cause = error.source();
    }
    if reason.is_empty() {
        format!("{:?}", status.code())
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTAL: &str = "the admin portal at 127.0.0.1:55006";

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).expect("the line is JSON")
    }

    #[test]
    fn replies_become_done_or_refused_with_their_sentence() {
        let done = Answer::from_reply(0, None);
        assert_eq!(
            (done.script_line().as_deref(), done.failure(), done.exit_code()),
            (Some(r#"{"error":0}"#), None, 0)
        );
        let refused = Answer::from_reply(404, Some("client 9 does not exist".into()));
        assert_eq!(refused.script_line().as_deref(), Some(r#"{"error":404,"description":"client 9 does not exist"}"#));
        assert_eq!(refused.failure().as_deref(), Some("client 9 does not exist (404)"));
        assert_eq!(refused.exit_code(), EXIT_REFUSED);
        assert_eq!(refused.for_person("client 9 deleted"), "client 9 does not exist (404)");
    }

    #[test]
    fn a_refusal_without_a_reason_still_says_something() {
        let refused = Answer::from_reply(500, Some(String::new()));
        assert_eq!(refused.failure().as_deref(), Some("the shop gave no reason (500)"));
    }

    #[test]
    fn a_found_entity_nests_its_parsed_data() {
        let found = Answer::retrieved(&[("CID", "7")], r#"{"CID":"7","name":"Ana"}"#, "client 7".into());
        let line = found.script_line().expect("a found entity has a line");
        assert_eq!(parse(&line), json!({"CID": "7", "data": {"CID": "7", "name": "Ana"}}));
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!((found.failure(), found.exit_code()), (None, EXIT_OK));
        assert!(found.for_person("").contains("\n  \"data\": {\n    \"CID\": \"7\",\n"), "indented");
        let order = Answer::retrieved(&[("OID", "10"), ("CID", "7")], "[1]", "order 10".into());
        assert_eq!(parse(&order.script_line().unwrap()), json!({"OID": "10", "CID": "7", "data": [1]}));
    }

    #[test]
    fn data_that_is_not_json_stays_a_string() {
        assert_eq!(entity(&[("PID", "3")], "pen"), json!({"PID": "3", "data": "pen"}));
    }

    #[test]
    fn the_zero_object_is_missing_null_and_exit_1() {
        let missing = Answer::retrieved(&[("OID", "0"), ("CID", "")], "", "order 12".into());
        assert_eq!(missing, Answer::Missing("order 12".into()));
        assert_eq!(missing.script_line().as_deref(), Some("null"));
        assert_eq!(missing.failure().as_deref(), Some("order 12 does not exist"));
        assert_eq!(missing.exit_code(), EXIT_REFUSED);
        let zero = Answer::retrieved(&[("CID", "0")], r#"{"name":"Zero"}"#, "client 0".into());
        assert!(matches!(zero, Answer::Found(_)), "client 0 with data exists");
    }

    #[test]
    fn refusing_statuses_keep_an_api_code_and_the_rest_are_no_answer() {
        let not_found = Answer::from_status(&Status::not_found("client 9 does not exist"), PORTAL);
        assert_eq!(not_found, Answer::Rejected { code: 404, description: "client 9 does not exist".into() });
        assert_eq!(not_found.script_line(), None, "stdout holds only entities");
        assert_eq!(not_found.failure().as_deref(), Some("client 9 does not exist (404)"));
        assert_eq!(Answer::from_status(&Status::invalid_argument("CID ..."), PORTAL).exit_code(), EXIT_REFUSED);
        let down = Answer::from_status(&Status::unavailable("shard odd did not answer before the deadline"), PORTAL);
        assert_eq!(
            down.failure().as_deref(),
            Some("no answer from the admin portal at 127.0.0.1:55006: shard odd did not answer before the deadline")
        );
        assert_eq!((down.script_line(), down.exit_code()), (None, EXIT_NO_ANSWER));
        let denied = Answer::from_status(&Status::permission_denied("user bo (clerk) may not call"), PORTAL);
        assert_eq!(denied.failure().unwrap(), "user bo (clerk) may not call (403)");
        assert_eq!(denied.exit_code(), EXIT_REFUSED);
        let silent = Answer::from_status(&Status::deadline_exceeded(""), PORTAL);
        assert_eq!(
            silent.failure().as_deref(),
            Some("no answer from the admin portal at 127.0.0.1:55006: DeadlineExceeded")
        );
    }

    #[test]
    fn lists_print_nothing_more_and_count_for_people() {
        assert_eq!((Answer::Listed(2).script_line(), Answer::Listed(2).exit_code()), (None, EXIT_OK));
        assert_eq!(Answer::Listed(0).for_person(""), "no orders");
        assert_eq!(Answer::Listed(1).for_person(""), "1 order");
        assert_eq!(Answer::Listed(3).for_person(""), "3 orders");
    }

    #[test]
    fn success_at_the_prompt_is_the_callers_sentence() {
        assert_eq!(Answer::Done.for_person("client 7 created"), "client 7 created");
    }
}
