//! Reading one line typed at a `raftshop admin` or `raftshop order` prompt,
//! without I/O.
//!
//! A line is a command's name, its IDs one word each, then (for commands
//! that take data) the rest of the line as JSON, spaces and all:
//!
//! ```text
//! create-client 7 {"name": "Ana Maria"}
//! ```
//!
//! Each prompt describes its commands in a table of [`Syntax`]; the same
//! table drives the help text and the usage shown when a line is wrong.
//! Blank lines and `#` comments are skipped, so a session can be a script.
//! Every mistake is a sentence, and never ends the session.

use super::table::{self, Align, Column};

/// One command of a prompt, as `help` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syntax {
    /// What the line starts with: `create-client`.
    pub name: &'static str,
    /// What follows the name: `CID JSON`.
    pub args: &'static str,
    /// What it does, in a few words.
    pub about: &'static str,
}

impl Syntax {
    /// The command as typed: `create-client CID JSON`.
    pub fn usage(&self) -> String {
        if self.args.is_empty() {
            self.name.to_owned()
        } else {
            format!("{} {}", self.name, self.args)
        }
    }
}

/// What a line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Nothing: a blank line or a `#` comment.
    Blank,
    /// `help` or `?`: list the commands.
    Help,
    /// `quit`, `exit` or `q`: end the session.
    Quit,
    /// One of the prompt's commands, with the words after its name.
    Command(Words<'a>),
}

/// Classifies `line` against the prompt's `commands`; an unknown command
/// is an error sentence.
pub fn parse<'a>(line: &'a str, commands: &'static [Syntax]) -> Result<Line<'a>, String> {
    let line = line.trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    match name {
        "" => Ok(Line::Blank),
        _ if name.starts_with('#') => Ok(Line::Blank),
        "help" | "?" => Ok(Line::Help),
        "quit" | "exit" | "q" => Ok(Line::Quit),
        _ => match commands.iter().find(|c| c.name == name) {
            Some(syntax) => Ok(Line::Command(Words { syntax, rest: rest.trim_start() })),
            None => Err(format!("there is no command {name:?}; type help to see the commands")),
        },
    }
}

/// The words after a command's name, taken in order by the prompt that
/// builds the call.
#[derive(Debug, PartialEq, Eq)]
pub struct Words<'a> {
    /// The command they belong to, for usage in errors.
    pub syntax: &'static Syntax,
    /// What is not taken yet, without leading spaces.
    rest: &'a str,
}

impl Words<'_> {
    /// The next word, as the ID `field` (`CID`), by the portals' rules.
    pub fn id(&mut self, field: &str) -> Result<u64, String> {
        let (word, rest) = self.rest.split_once(char::is_whitespace).unwrap_or((self.rest, ""));
        if word.is_empty() {
            return Err(self.usage_error(&format!("{} needs the {field}", self.syntax.name)));
        }
        let id = portals::request::parse_id(field, word).map_err(|e| e.0)?;
        self.rest = rest.trim_start();
        Ok(id)
    }

    /// The rest of the line, as the JSON data of `what` (`the client`).
    pub fn json(&mut self, what: &str) -> Result<String, String> {
        let data = std::mem::take(&mut self.rest).trim_end();
        if data.is_empty() {
            return Err(self.usage_error(&format!("{} needs {what} as JSON", self.syntax.name)));
        }
        Ok(data.to_owned())
    }

    /// Checks that nothing is left over.
    pub fn finish(self) -> Result<(), String> {
        match self.rest.trim_end() {
            "" => Ok(()),
            extra => Err(self.usage_error(&format!("{} takes nothing more, but got {extra:?}", self.syntax.name))),
        }
    }

    /// `problem`, then how the command is typed.
    fn usage_error(&self, problem: &str) -> String {
        format!("{problem} (usage: {})", self.syntax.usage())
    }
}

/// The help text of a prompt with `commands`: one line per command, and
/// the ones every prompt has.
pub fn help(commands: &[Syntax]) -> String {
    const COLUMNS: [Column; 2] =
        [Column { title: "command", align: Align::Left }, Column { title: "does", align: Align::Left }];
    let common = [("help", "show this list"), ("quit", "leave (so does end of input)")];
    let rows: Vec<Vec<String>> = commands
        .iter()
        .map(|c| vec![c.usage(), c.about.to_owned()])
        .chain(common.iter().map(|(usage, about)| vec![(*usage).to_owned(), (*about).to_owned()]))
        .collect();
    table::render(&COLUMNS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMANDS: &[Syntax] = &[
        Syntax { name: "create", args: "OID JSON", about: "add an order" },
        Syntax { name: "get", args: "OID", about: "show an order" },
        Syntax { name: "list", args: "", about: "every order" },
    ];

    fn words(line: &str) -> Words<'_> {
        match parse(line, COMMANDS) {
            Ok(Line::Command(words)) => words,
            other => panic!("{line:?} is not a command: {other:?}"),
        }
    }

    #[test]
    fn blank_lines_comments_help_and_quit_are_recognized() {
        for line in ["", "   ", "# a comment", "#create 1 []"] {
            assert_eq!(parse(line, COMMANDS), Ok(Line::Blank), "{line:?}");
        }
        assert_eq!(parse(" help ", COMMANDS), Ok(Line::Help));
        assert_eq!(parse("?", COMMANDS), Ok(Line::Help));
        for line in ["quit", "exit", "q"] {
            assert_eq!(parse(line, COMMANDS), Ok(Line::Quit), "{line:?}");
        }
    }

    #[test]
    fn an_unknown_command_says_where_to_look() {
        let error = parse("remove 7", COMMANDS).unwrap_err();
        assert_eq!(error, r#"there is no command "remove"; type help to see the commands"#);
    }

    #[test]
    fn ids_are_words_and_json_is_the_rest_of_the_line() {
        let mut w = words("  create   10   [{\"id\": 1, \"quantity\": 3}]  ");
        assert_eq!(w.syntax.name, "create");
        assert_eq!(w.id("OID"), Ok(10));
        assert_eq!(w.json("the order's items").as_deref(), Ok("[{\"id\": 1, \"quantity\": 3}]"));
        assert_eq!(w.finish(), Ok(()));
    }

    #[test]
    fn a_missing_or_bad_id_is_a_sentence_with_the_usage() {
        assert_eq!(words("get").id("OID").unwrap_err(), "get needs the OID (usage: get OID)");
        assert_eq!(words("get ten").id("OID").unwrap_err(), r#"OID must be a decimal integer, got "ten""#);
        assert_eq!(words("get -1").id("OID").unwrap_err(), r#"OID must be a decimal integer, got "-1""#);
        let long = format!("get {}", "1".repeat(21));
        assert!(words(&long).id("OID").unwrap_err().contains("at most 20 are allowed"));
    }

    #[test]
    fn missing_json_and_extra_words_are_sentences_with_the_usage() {
        let mut w = words("create 10");
        w.id("OID").expect("an id");
        assert_eq!(
            w.json("the order's items").unwrap_err(),
            "create needs the order's items as JSON (usage: create OID JSON)"
        );
        let mut w = words("get 10 11");
        w.id("OID").expect("an id");
        assert_eq!(w.finish().unwrap_err(), r#"get takes nothing more, but got "11" (usage: get OID)"#);
        assert_eq!(words("list").finish(), Ok(()));
    }

    #[test]
    fn help_lists_every_command_with_its_usage() {
        let expected = "\
command          does
create OID JSON  add an order
get OID          show an order
list             every order
help             show this list
quit             leave (so does end of input)
";
        assert_eq!(help(COMMANDS), expected);
    }
}
