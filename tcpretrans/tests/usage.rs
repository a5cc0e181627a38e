//! Bad input: one clear sentence on stderr and exit status 2, before any
//! kernel work (no root needed), never a panic.
use std::process::Command;

/// Runs tcpretrans with `args` and returns its stderr, checking the status
/// and the shape of the message.
fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running tcpretrans");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?}: {stderr}"
    );
    first.to_owned()
}

#[test]
fn unknown_state_names() {
    let line = refused(&["--state=fin_wait3"]);
    assert!(line.contains("unknown TCP state `fin_wait3`"), "{line}");
}

#[test]
fn malformed_or_out_of_range_addresses() {
    for args in [
        ["--laddr", "10.0.0.300"],
        ["--raddr", "10.0.0.0/33"],
        ["--laddr", "::1/129"],
        ["--raddr", "example.com"],
        ["--laddr", "10.0.0.0/x"],
    ] {
        refused(&args);
    }
}

#[test]
fn malformed_or_out_of_range_ports_and_pids() {
    for args in [
        ["-P", "0"],
        ["--lport", "70000"],
        ["--rport", "http"],
        ["-p", "0"],
        ["--pid", "-5"],
        ["-p", "abc"],
    ] {
        refused(&args);
    }
}

#[test]
fn zero_negative_or_malformed_durations() {
    for value in ["0", "-1", "soon", "inf", "NaN"] {
        refused(&["--duration", value]);
    }
    refused(&["-c", "-i", "0"]);
}

#[test]
fn conflicting_or_incomplete_flags() {
    let line = refused(&["-4", "-6"]);
    assert!(line.contains("cannot be used with"), "{line}");
    refused(&["-c", "--state"]);
    refused(&["-i", "5"]);
    refused(&["--top", "3"]);
}

#[test]
fn sizes_out_of_range() {
    refused(&["--ring-size", "3M"]);
    refused(&["--ring-size", "2G"]);
    refused(&["--max-sockets", "5"]);
}

#[test]
fn cgroups_and_namespaces_that_do_not_exist() {
    let line = refused(&["--cgroup", "/sys/fs/cgroup/no-such-cgroup-here"]);
    assert!(line.contains("No such file or directory"), "{line}");
    let line = refused(&["--cgroup", "/tmp"]);
    assert!(line.contains("not a cgroup v2 directory"), "{line}");
    let line = refused(&["--netns", "1"]);
    assert!(line.contains("no network namespace with inode 1"), "{line}");
    refused(&["--netns", "no-such-namespace"]);
}

/// `--generate`: each shell accepts its completion script (checked by the
/// shell's own parser; `cargo xtask setup` installs zsh and fish).
#[test]
fn completion_scripts_parse_in_their_shells() {
    for (kind, shell, check) in [
        ("complete-bash", "bash", "-n"),
        ("complete-zsh", "zsh", "-n"),
        ("complete-fish", "fish", "--no-execute"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(["--generate", kind])
            .output()
            .expect("running tcpretrans");
        assert!(output.status.success(), "{kind}");
        let script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(script.path(), &output.stdout).unwrap();
        let checked = Command::new(shell)
            .arg(check)
            .arg(script.path())
            .output()
            .unwrap_or_else(|e| panic!("{shell} is needed to check {kind}: {e}"));
        assert!(
            checked.status.success(),
            "{shell} rejects its completions: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

/// `--generate man | head -1` ends quietly, like any filter.
#[test]
fn generated_output_into_a_closed_pipe_is_not_an_error() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
        .args(["--generate", "man"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tcpretrans");
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
