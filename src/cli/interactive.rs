//! The prompt of `raftshop admin` and `raftshop order --cid N`: read a line,
//! carry it out, print the answer for a person, repeat until `quit` or the
//! end of input.
//!
//! The loop is the same for both portals; what differs (the commands, how
//! a line becomes a call, how a call is made) is a [`Shell`]. Lines come
//! from any async reader and answers go to any writer, so a session works
//! with no terminal at all: piped from a file or a test. Only when a person
//! types (stdin is a terminal) are the banner and the prompt shown. A line
//! that makes no sense, or a call that fails, prints one sentence and the
//! session goes on; only an I/O error on the output itself ends it.

use std::io::{self, IsTerminal, Write};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines, Stdin};

use super::prompt::{self, Line, Syntax, Words};

/// A prompt's commands, and how to carry them out.
pub trait Shell {
    /// The calls its lines become.
    type Call;
    /// Its commands, for reading lines and for `help`.
    const COMMANDS: &'static [Syntax];
    /// Shown before each line when a person types: `admin> `.
    fn prompt(&self) -> String;
    /// The call a command's words make, or why they make none.
    fn call(&self, words: Words<'_>) -> Result<Self::Call, String>;
    /// Makes `call` and writes what a person should see to `out`.
    async fn perform(&mut self, call: Self::Call, out: &mut dyn Write) -> io::Result<()>;
}

/// A conversation: lines in, answers out.
pub struct Session<R, W> {
    /// The lines typed or piped in.
    lines: Lines<R>,
    /// Where answers go.
    out: W,
    /// Whether a person is typing, so prompts and the banner are shown.
    person: bool,
}

impl Session<BufReader<Stdin>, io::Stdout> {
    /// The session on stdin and stdout; a person types if stdin is a
    /// terminal.
    pub fn stdio() -> Self {
        let person = io::stdin().is_terminal();
        Session::new(BufReader::new(tokio::io::stdin()), io::stdout(), person)
    }
}

impl<R: AsyncBufRead + Unpin, W: Write> Session<R, W> {
    /// A session reading `input`, answering on `out`.
    pub fn new(input: R, out: W, person: bool) -> Self {
        Session { lines: input.lines(), out, person }
    }

    /// Asks for an ID (`client ID`) until one is given; `None` if the input
    /// ends or the person quits first.
    pub async fn ask_id(&mut self, question: &str) -> io::Result<Option<u64>> {
        loop {
            if self.person {
                write!(self.out, "{question}? ")?;
                self.out.flush()?;
            }
            let Some(line) = self.lines.next_line().await? else { return Ok(None) };
            match line.trim() {
                "" => continue,
                comment if comment.starts_with('#') => continue,
                "quit" | "exit" | "q" => return Ok(None),
                answer => match portals::request::parse_id(&format!("the {question}"), answer) {
                    Ok(id) => return Ok(Some(id)),
                    Err(why) => writeln!(self.out, "{why}")?,
                },
            }
        }
    }

    /// Runs `shell` until `quit` or the end of input, showing `banner`
    /// first if a person types.
    pub async fn run<S: Shell>(&mut self, shell: &mut S, banner: &str) -> io::Result<()> {
        if self.person {
            writeln!(self.out, "{banner}; type help to see the commands, quit to leave")?;
        }
        loop {
            if self.person {
                write!(self.out, "{}", shell.prompt())?;
                self.out.flush()?;
            }
            let Some(line) = self.lines.next_line().await? else {
                if self.person {
                    writeln!(self.out)?;
                }
                return Ok(());
            };
            let call = match prompt::parse(&line, S::COMMANDS) {
                Ok(Line::Blank) => continue,
                Ok(Line::Help) => {
                    write!(self.out, "{}", prompt::help(S::COMMANDS))?;
                    continue;
                }
                Ok(Line::Quit) => return Ok(()),
                Ok(Line::Command(words)) => shell.call(words),
                Err(why) => Err(why),
            };
            match call {
                Ok(call) => shell.perform(call, &mut self.out).await?,
                Err(why) => writeln!(self.out, "{why}")?,
            }
        }
    }

    /// The writer, for tests to read what was answered.
    #[cfg(test)]
    pub fn into_output(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that echoes its one command, and fails on 0.
    struct Echo;

    impl Shell for Echo {
        type Call = u64;
        const COMMANDS: &'static [Syntax] = &[Syntax { name: "echo", args: "N", about: "say N" }];

        fn prompt(&self) -> String {
            "echo> ".into()
        }

        fn call(&self, mut words: Words<'_>) -> Result<u64, String> {
            let n = words.id("N")?;
            words.finish()?;
            Ok(n)
        }

        async fn perform(&mut self, n: u64, out: &mut dyn Write) -> io::Result<()> {
            match n {
                0 => writeln!(out, "zero is refused (400)"),
                n => writeln!(out, "{n}"),
            }
        }
    }

    async fn session(input: &str, person: bool) -> String {
        let mut session = Session::new(input.as_bytes(), Vec::new(), person);
        session.run(&mut Echo, "echo at nowhere").await.expect("writing to a Vec works");
        String::from_utf8(session.into_output()).expect("text")
    }

    #[tokio::test]
    async fn piped_lines_are_answered_in_order_without_prompts() {
        assert_eq!(session("echo 1\n\n# note\necho 2\n", false).await, "1\n2\n");
    }

    #[tokio::test]
    async fn bad_lines_and_failed_calls_do_not_end_the_session() {
        let output = session("nonsense\necho x\necho 1 2\necho 0\necho 3\n", false).await;
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(
            lines,
            [
                r#"there is no command "nonsense"; type help to see the commands"#,
                r#"N must be a decimal integer, got "x""#,
                r#"echo takes nothing more, but got "2" (usage: echo N)"#,
                "zero is refused (400)",
                "3",
            ]
        );
    }

    #[tokio::test]
    async fn quit_ends_the_session_before_the_end_of_input() {
        assert_eq!(session("echo 1\nquit\necho 2\n", false).await, "1\n");
    }

    #[tokio::test]
    async fn help_lists_the_commands() {
        let output = session("help\n", false).await;
        assert!(output.contains("echo N   say N\n"), "{output}");
        assert!(output.contains("quit"), "{output}");
    }

    #[tokio::test]
    async fn a_person_sees_the_banner_and_a_prompt_per_line() {
        let output = session("echo 5\n", true).await;
        assert_eq!(output, "echo at nowhere; type help to see the commands, quit to leave\necho> 5\necho> \n");
    }

    #[tokio::test]
    async fn ask_id_repeats_until_a_number_comes() {
        let mut session = Session::new("\nseven\n7\n".as_bytes(), Vec::new(), false);
        assert_eq!(session.ask_id("client ID").await.expect("io"), Some(7));
        let output = String::from_utf8(session.into_output()).expect("text");
        assert_eq!(output, "the client ID must be a decimal integer, got \"seven\"\n");
        let mut ended = Session::new("quit\n".as_bytes(), Vec::new(), false);
        assert_eq!(ended.ask_id("client ID").await.expect("io"), None);
    }
}
