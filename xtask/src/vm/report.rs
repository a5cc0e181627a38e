//! What a guest's `tcpretrans --check` and lab output say, and the matrix
//! table made of them.
use std::{fmt::Write as _, time::Duration};

/// From `--check`: where the hooks ran and what the kernel lacks.
#[derive(Debug, Default, PartialEq)]
pub struct Check {
    /// Hooks on BTF, raw and classic tracepoints.
    pub hooks: Option<(u32, u32, u32)>,
    /// BTF members (`request_sock.timeout`, ...) and tracepoints the
    /// kernel lacks.
    pub unavailable: Vec<String>,
    /// The `result` line's verdict when the tool cannot trace.
    pub refused: Option<String>,
}

impl Check {
    pub fn parse(output: &str) -> Self {
        let mut check = Self::default();
        for line in output.lines() {
            let trimmed = line.trim();
            if let Some(rest) = line.strip_prefix("programs ") {
                check.hooks = hooks(rest);
            } else if trimmed.ends_with(": shown as unknown")
                && let Some(member) = trimmed.split_whitespace().next()
            {
                // `MISSING`, or `UNUSABLE (why)`.
                check.unavailable.push(member.to_owned());
            } else if let Some(rest) = line.strip_prefix("tracepoint ") {
                if let Some((name, _)) = rest.trim().split_once("  unusable") {
                    check.unavailable.push(format!("tracepoint {name}"));
                }
            } else if line.starts_with("btf ") && trimmed.contains("unavailable") {
                check.unavailable.push("BTF".into());
            } else if let Some(why) = line.strip_prefix("result      cannot trace here: ") {
                check.refused = Some(why.to_owned());
            }
        }
        if output.trim().is_empty() {
            check.refused = Some("no output".into());
        }
        check
    }
}

/// `... (1.2s; of 7 hooks, 1 on BTF and 5 on raw tracepoints)`.
fn hooks(line: &str) -> Option<(u32, u32, u32)> {
    let rest = &line[line.find("of ")? + 3..];
    let number = |text: &str| -> Option<u32> { text.split_whitespace().next()?.parse().ok() };
    let all = number(rest)?;
    let btf = number(&rest[rest.find(", ")? + 2..])?;
    let raw = number(&rest[rest.find(" and ")? + 5..])?;
    Some((btf, raw, all.checked_sub(btf + raw)?))
}

/// One lab test's outcome.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Passed,
    /// Passed, having printed `skipped: REASON`: the reason.
    Skipped(String),
    /// The panic message, or what the harness printed.
    Failed(String),
    /// Still running when the guest stopped.
    Unfinished,
}

#[derive(Debug, PartialEq)]
pub struct Test {
    pub name: String,
    pub verdict: Verdict,
    /// Lines a passing test printed that hold the tool's numbers against
    /// the kernel's own counters.
    pub reconciled: Vec<String>,
}

/// What the lab's tests print when they compare with the kernel's counters
/// (`Tcp.RetransSegs`, `TCPTimeouts`, ...), `ss`, or an ftrace count.
const RECONCILIATIONS: [&str; 4] = ["Tcp.", "TCP", "= ss", "transitions made"];

/// The lab's tests in the order they ran, from the harness's output with
/// `--show-output`.
pub fn lab(output: &str) -> Vec<Test> {
    let mut tests: Vec<(String, Verdict)> = Vec::new();
    // `test NAME ... ok`; a child process writing to the inherited stdout
    // can push the verdict onto a later line.
    let mut running: Option<String> = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, tail)) = rest.split_once(" ... ")
        {
            running = Some(name.to_owned());
            record(&mut tests, &mut running, tail);
        } else if running.is_some() {
            record(&mut tests, &mut running, line);
        }
    }
    if let Some(name) = running {
        tests.push((name, Verdict::Unfinished));
    }
    // Each test's captured output: `---- NAME stdout ----` to the next
    // such line or to the harness's `successes:`/`failures:` heading.
    let mut block: Option<(String, String)> = None;
    let mut blocks = Vec::new();
    for line in output.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            blocks.extend(block.take());
            block = Some((name.to_owned(), String::new()));
        } else if line == "successes:" || line == "failures:" {
            blocks.extend(block.take());
        } else if let Some((_, text)) = &mut block {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks.extend(block);
    tests
        .into_iter()
        .map(|(name, mut verdict)| {
            let text = blocks
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, text)| text.as_str());
            let mut reconciled = Vec::new();
            match &mut verdict {
                Verdict::Passed => {
                    if let Some(reason) = text.lines().find_map(|l| l.strip_prefix("skipped: ")) {
                        verdict = Verdict::Skipped(reason.to_owned());
                    } else {
                        reconciled = text
                            .lines()
                            .filter(|l| RECONCILIATIONS.iter().any(|r| l.contains(r)))
                            .map(str::to_owned)
                            .collect();
                    }
                }
                Verdict::Failed(message) => *message = panic_message(text),
                Verdict::Skipped(_) | Verdict::Unfinished => {}
            }
            Test {
                name,
                verdict,
                reconciled,
            }
        })
        .collect()
}

fn record(tests: &mut Vec<(String, Verdict)>, running: &mut Option<String>, text: &str) {
    let verdict = if text.ends_with("ok") {
        Verdict::Passed
    } else if text.ends_with("FAILED") {
        Verdict::Failed(String::new())
    } else {
        return;
    };
    tests.extend(running.take().map(|name| (name, verdict)));
}

/// From a failed test's output: the panic's message, without the location
/// line and the backtrace or the note about it.
fn panic_message(text: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains("panicked at"));
    let message: Vec<&str> = match lines.next() {
        Some(_) => lines
            .take_while(|l| {
                !l.starts_with("note: run with `RUST_BACKTRACE") && *l != "stack backtrace:"
            })
            .collect(),
        None => text.lines().collect(),
    };
    message.join("\n").trim().to_owned()
}

/// One kernel's row of the matrix.
pub struct Row {
    pub series: &'static str,
    pub release: String,
    pub version: String,
    pub distribution: &'static str,
    pub check: Check,
    pub tests: Vec<Test>,
    pub boot: Option<Duration>,
    pub check_time: Option<Duration>,
    pub lab_time: Option<Duration>,
    pub wall: Duration,
}

impl Row {
    pub fn count(&self) -> (usize, usize, usize) {
        let of = |f: fn(&Verdict) -> bool| self.tests.iter().filter(|t| f(&t.verdict)).count();
        (
            of(|v| *v == Verdict::Passed),
            of(|v| matches!(v, Verdict::Skipped(_))),
            of(|v| matches!(v, Verdict::Failed(_) | Verdict::Unfinished)),
        )
    }
}

/// The matrix as a Markdown table (the README's Compatibility section shows
/// one), then every skip and failure with its reason.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Kernel | Distribution | Hooks: BTF / raw / classic | Unavailable | Lab: passed / skipped / failed | Wall: boot + check + lab |\n\
         |---|---|---|---|---|---|\n",
    );
    let seconds =
        |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.0} s", d.as_secs_f64()));
    for row in rows {
        let hooks = match (&row.check.refused, row.check.hooks) {
            (Some(why), _) => format!("cannot trace: {why}"),
            (None, Some((btf, raw, classic))) => format!("{btf} / {raw} / {classic}"),
            (None, None) => "?".into(),
        };
        let unavailable = if row.check.unavailable.is_empty() {
            "–".into()
        } else {
            row.check
                .unavailable
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (passed, skipped, failed) = row.count();
        writeln!(
            out,
            "| {} ({}) | {} | {hooks} | {unavailable} | {passed} / {skipped} / {failed} | {} + {} + {} ({:.0} s) |",
            row.version,
            row.release,
            row.distribution,
            seconds(row.boot),
            seconds(row.check_time),
            seconds(row.lab_time),
            row.wall.as_secs_f64(),
        )
        .expect("writing to a String");
    }
    for row in rows {
        for test in &row.tests {
            let (what, why) = match &test.verdict {
                Verdict::Skipped(why) => ("skipped", why.as_str()),
                Verdict::Failed(why) => ("FAILED", why.as_str()),
                Verdict::Unfinished => ("unfinished", "the guest stopped while it ran"),
                Verdict::Passed => continue,
            };
            writeln!(
                out,
                "\n{} {what}: {}\n{}",
                row.series,
                test.name,
                abridged(why)
            )
            .expect("writing to a String");
        }
    }
    for row in rows {
        let reconciled: Vec<&String> = row.tests.iter().flat_map(|t| &t.reconciled).collect();
        if !reconciled.is_empty() {
            writeln!(
                out,
                "\n{}: the tool against the kernel's counts",
                row.series
            )
            .expect("writing to a String");
        }
        for line in reconciled {
            writeln!(out, "  {}", abridged(line)).expect("writing to a String");
        }
    }
    out
}

/// One line on the static tracer in a guest without libc.
pub fn bare(outcome: &super::bare::Outcome) -> String {
    let hooks = match (&outcome.check.refused, outcome.check.hooks) {
        (Some(why), _) => format!("cannot trace: {why}"),
        (None, Some((btf, raw, classic))) => format!("hooks {btf} / {raw} / {classic}"),
        (None, None) => "hooks ?".into(),
    };
    let mut line = format!(
        "{} with no libc ({} files in its root, {:.0} s): {hooks}, unavailable {:?}; {} SYN \
         retransmissions, the unreachable peer's {:?}, segments {} / RetransSegs {}, TIME_WAIT \
         entries {} / netstat {}",
        outcome.release,
        outcome.files,
        outcome.wall.as_secs_f64(),
        outcome.check.unavailable,
        outcome.syn_retransmits,
        outcome.outage,
        outcome.segments.0,
        outcome.segments.1,
        outcome.time_wait.0,
        outcome.time_wait.1,
    );
    for problem in &outcome.problems {
        write!(line, "\n  FAILED: {}", abridged(problem)).expect("writing to a String");
    }
    line
}

/// The head of a failure message, each line cut short: assertion messages
/// can hold a whole tracer output (the run directory's `lab.txt` has it).
fn abridged(text: &str) -> String {
    const LINES: usize = 12;
    const WIDTH: usize = 240;
    let mut out: Vec<String> = text
        .lines()
        .take(LINES)
        .map(|l| match l.char_indices().nth(WIDTH) {
            Some((cut, _)) => format!("{} …", &l[..cut]),
            None => l.to_owned(),
        })
        .collect();
    if text.lines().count() > LINES {
        out.push("…".into());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output() {
        let check = Check::parse(
            "tracepoint  tcp:tcp_retransmit_skb  skbaddr@8\n\
             btf         /sys/kernel/btf/vmlinux (read and resolved in 1.6ms)\n\
             \x20 sock.sk_cgrp_data.cgroup                     MISSING: shown as unknown\n\
             \x20 cgroup.level                                 byte 216\n\
             programs    load, verify and attach: ok (1.1s; of 7 hooks, 0 on BTF and 6 on raw tracepoints)\n\
             result      tcpretrans can trace here\n",
        );
        assert_eq!(
            check,
            Check {
                hooks: Some((0, 6, 1)),
                unavailable: vec!["sock.sk_cgrp_data.cgroup".into()],
                refused: None,
            }
        );
    }

    #[test]
    fn lab_output() {
        let tests = lab("\nrunning 4 tests\n\
             test a::one ... ok\n\
             test a::two ... child output\n\
             ok\n\
             test b::three ... FAILED\n\
             test b::four ... \n\
             successes:\n\n\
             ---- a::one stdout ----\n\
             segments: tool 5 = kernel Tcp.RetransSegs +5\n\n\
             ---- a::two stdout ----\n\
             skipped: 5.10 has no request_sock.timeout\n\n\
             successes:\n    a::one\n    a::two\n\n\
             failures:\n\n\
             ---- b::three stdout ----\n\
             thread 'b::three' panicked at tcpretrans/tests/lab/x.rs:1:2:\n\
             assertion failed\nleft: 1\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\n\
             failures:\n    b::three\n");
        let verdicts: Vec<(&str, &Verdict)> = tests
            .iter()
            .map(|t| (t.name.as_str(), &t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("a::one", &Verdict::Passed),
                (
                    "a::two",
                    &Verdict::Skipped("5.10 has no request_sock.timeout".into())
                ),
                (
                    "b::three",
                    &Verdict::Failed("assertion failed\nleft: 1".into())
                ),
                ("b::four", &Verdict::Unfinished),
            ]
        );
        assert_eq!(
            tests[0].reconciled,
            ["segments: tool 5 = kernel Tcp.RetransSegs +5"]
        );
    }
}
