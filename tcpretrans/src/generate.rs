//! The man page and shell completions, generated from the clap definition
//! (`tcpretrans --generate KIND`; `cargo xtask dist` writes them all).
use std::io::{self, Write};

use clap::{CommandFactory as _, ValueEnum};
use clap_complete::Shell;

use crate::cli::{Args, EXAMPLES, exit_status};

/// What `--generate` writes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// roff, for `man 8 tcpretrans`.
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

pub fn write(what: Generated, out: &mut impl Write) -> io::Result<()> {
    let mut command = Args::command();
    let shell = match what {
        Generated::Man => return man(command, out),
        Generated::CompleteBash => Shell::Bash,
        Generated::CompleteZsh => Shell::Zsh,
        Generated::CompleteFish => Shell::Fish,
    };
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
    Ok(())
}

/// clap_mangen's sections, with the examples and exit statuses as roff
/// lists instead of `--help`'s preformatted text.
fn man(command: clap::Command, out: &mut impl Write) -> io::Result<()> {
    // Section 8: a system administration command, like bcc's tools.
    let man = clap_mangen::Man::new(command).section("8");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH EXAMPLES")?;
    for (command, what) in EXAMPLES {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(command), roff(what))?;
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (status, meaning) in exit_status::MEANINGS {
        writeln!(out, ".TP\n{status}\n{}", roff(meaning))?;
    }
    man.render_version_section(out)
}

/// Text safe as a roff line: escapes, hyphens that are minus signs, and no
/// leading `.` or `'` (those start requests).
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(what: Generated) -> String {
        let mut out = Vec::new();
        write(what, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn man_page_lists_options_by_group_examples_and_exit_statuses() {
        let page = generated(Generated::Man);
        assert!(page.contains(".TH tcpretrans 8"));
        assert!(page.contains("\\fB\\-\\-ring\\-size\\fR"));
        assert!(page.contains(".TP\n\\fBtcpretrans \\-c \\-i 10 \\-\\-top 20\\fR\n"));
        assert!(page.contains(".SH \"EXIT STATUS\"\n.TP\n0\n"));
        assert!(page.contains(".TP\n3\ntraced, but events were lost"));
        assert!(!page.contains("--generate"), "hidden options stay hidden");
        assert!(page.contains("\\fR\n\\&... and every TCP state transition\n"));
    }

    #[test]
    fn completions_offer_every_option_and_value() {
        for what in [
            Generated::CompleteBash,
            Generated::CompleteZsh,
            Generated::CompleteFish,
        ] {
            let script = generated(what);
            for word in ["state", "ring-size", "netns", "always"] {
                assert!(script.contains(word), "{what:?} lacks {word}");
            }
        }
    }
}
