//! One aligned line per event, bcc-compatible columns first.
mod escape;

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use anstyle::{AnsiColor, Style as Paint};
use jiff::{Timestamp, tz::TimeZone};

use self::escape::escape;
use super::{Output, Style, errno_name, send_error_name};
use crate::{
    events::{Account, Cause, Close, Event, Retransmit, SessionEnd, Socket, StateChange, TcpState},
    sessions::Session,
};

/// `255.255.255.255:65535`; an IPv6 endpoint widens its line unless `-6`
/// asked for IPv6-wide columns.
const ENDPOINT_WIDTH: usize = 21;
/// `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535`.
const ENDPOINT_WIDTH_V6: usize = 47;
const COMM_WIDTH: usize = 15;
/// `--pod`: a pod's `namespace/name` fits most; longer ones push the line.
const POD_WIDTH: usize = 28;

/// With `--color`: what needs attention stands out, nothing else is painted.
/// A timeout, failure, reset or loss.
const TROUBLE: Paint = AnsiColor::Red.on_default();
/// Recovered without a timeout: ACK-driven retransmits, TIME_WAIT reuse.
const NOTICE: Paint = AnsiColor::Yellow.on_default();
/// A tail loss probe: a cheap guess, often not a loss at all.
const PROBE: Paint = AnsiColor::Cyan.on_default();
const LOST: Paint = AnsiColor::Red.on_default().bold();

pub struct Text<W: Write> {
    out: BufWriter<W>,
    tz: TimeZone,
    line: String,
    sequence: bool,
    count: bool,
    quiet: bool,
    /// With `-t`: when tracing started; TIME counts from it.
    relative_to: Option<Timestamp>,
    relative_time: bool,
    endpoint_width: usize,
    color: bool,
    /// `--pod`: the POD column.
    pod: bool,
}

impl<W: Write> Text<W> {
    pub fn new(writer: W, style: Style) -> Self {
        Self::with_time_zone(writer, style, TimeZone::system())
    }

    pub fn with_time_zone(writer: W, style: Style, tz: TimeZone) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, writer),
            tz,
            line: String::with_capacity(256),
            sequence: style.sequence,
            count: style.count,
            quiet: style.quiet,
            relative_to: None,
            relative_time: style.relative_time,
            endpoint_width: if style.wide_endpoints {
                ENDPOINT_WIDTH_V6
            } else {
                ENDPOINT_WIDTH
            },
            color: style.color,
            pod: style.pod,
        }
    }

    /// Appends `text` left-aligned in `width` columns, in `paint` when
    /// colors are on (the padding stays outside the escapes).
    fn push_painted(&mut self, paint: Paint, text: &str, width: usize) {
        if self.color {
            let _ = write!(self.line, "{paint}{text}{paint:#}");
        } else {
            self.line.push_str(text);
        }
        let pad = width.saturating_sub(text.chars().count());
        self.line.extend(std::iter::repeat_n(' ', pad));
    }

    /// `HH:MM:SS.mmm`, or with `-t` seconds since tracing started.
    fn time_column(&self, time: Timestamp) -> String {
        match self.relative_to {
            Some(start) => format!("{:.6}", time.duration_since(start).as_secs_f64()),
            None => time
                .to_zoned(self.tz.clone())
                .strftime("%H:%M:%S%.3f")
                .to_string(),
        }
    }

    fn socket_columns(&mut self, socket: &Socket, kind: char) {
        let time = self.time_column(socket.time);
        let _ = write!(self.line, "{time:<12} ");
        self.owner_and_endpoints(socket, &format!("{kind}>"));
        self.line.push(' ');
    }

    /// `PID COMM [POD] IP`, aligned as `owner_and_endpoints` writes them.
    fn owner_heading(&self) -> String {
        let pod = if self.pod {
            format!(" {:<POD_WIDTH$}", "POD")
        } else {
            String::new()
        };
        format!("{:<7} {:<COMM_WIDTH$}{pod} IP", "PID", "COMM")
    }

    /// `PID COMM [POD] IP LADDR:LPORT <arrow> RADDR:RPORT`, aligned.
    fn owner_and_endpoints(&mut self, socket: &Socket, arrow: &str) {
        // Any process names itself: escaped, its name can neither split the
        // line nor drive the terminal, and is padded as it is shown.
        let (pid, comm) = match &socket.owner {
            Some(p) => (p.pid.to_string(), escape(p.comm.as_bytes())),
            None => ("-".to_owned(), Cow::Borrowed("-")),
        };
        let _ = write!(self.line, "{pid:<7} {comm:<COMM_WIDTH$} ");
        if self.pod {
            // Names from the node's files: escaped like a process's.
            let pod = socket
                .identity
                .as_deref()
                .and_then(|i| match (&i.pod_namespace, &i.pod) {
                    (Some(namespace), Some(pod)) => {
                        Some(escape(format!("{namespace}/{pod}").as_bytes()).into_owned())
                    }
                    _ => i
                        .container_id
                        .as_deref()
                        .map(|id| id[..12.min(id.len())].to_owned()),
                });
            let _ = write!(self.line, "{:<POD_WIDTH$} ", pod.as_deref().unwrap_or("-"));
        }
        let _ = write!(
            self.line,
            "{family:<2} {local:<width$} {arrow} {remote:<width$}",
            family = socket.family,
            local = endpoint(socket.laddr, socket.lport),
            remote = endpoint(socket.raddr, socket.rport),
            width = self.endpoint_width,
        );
    }

    /// `old -> new`, with the time spent in `old` if `with_time_in_old`,
    /// and why and how it closed.
    fn state_columns(&mut self, change: &StateChange, with_time_in_old: bool) {
        let (old, new) = (state_name(change.old_state), state_name(change.new_state));
        let _ = write!(self.line, "{old} -> {new}");
        if let Some(d) = change.prev_state.filter(|_| with_time_in_old) {
            let _ = write!(self.line, " ({} in {old})", human_duration(d));
        }
        let reason = match change.close {
            Some(Close::FinWait2Timewait) => " timewait",
            Some(Close::TimeWaitOverflow) => " TIME_WAIT overflow",
            Some(Close::ResetReceived) => " reset received",
            Some(Close::ResetSent) => " reset sent",
            Some(Close::TimeWait | Close::Error | Close::Closed) | None => "",
        };
        match change.close {
            Some(Close::TimeWaitOverflow | Close::ResetReceived | Close::ResetSent) => {
                self.push_painted(TROUBLE, reason, 0)
            }
            _ => self.line.push_str(reason),
        }
        if let Some(errno) = change.error {
            self.line.push(' ');
            self.push_painted(TROUBLE, &errno_name(errno), 0);
        }
        if change.orphan == Some(true) {
            self.line.push_str(" orphan");
        }
    }

    /// `session ended after 4.12s: ESTABLISHED -> CLOSE ETIMEDOUT; 3
    /// retransmits (RTO 3), 3 segments, max RTO 816ms`, and `, 2 failed
    /// attempts` the kernel could not send.
    fn session_end_columns(&mut self, end: &SessionEnd) {
        let lasted = end.opened.map_or_else(
            || "(began before tracing)".to_owned(),
            |t| {
                let d = end.change.socket.time.duration_since(t).unsigned_abs();
                format!("after {}", human_duration(d))
            },
        );
        let _ = write!(self.line, "session ended {lasted}: ");
        self.state_columns(&end.change, false);
        let a = &end.account;
        if a.retransmits() == 0 {
            self.line.push_str("; no retransmits");
        } else {
            let causes: Vec<String> = a.causes().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = write!(
                self.line,
                "; {} retransmits ({}), {} segments",
                a.retransmits(),
                causes.join(", "),
                a.segments
            );
            if let Some(rto) = a.max_rto {
                let _ = write!(self.line, ", max RTO {}", human_duration(rto));
            }
        }
        match a.failed {
            0 => {}
            1 => self.line.push_str(", 1 failed attempt"),
            n => {
                let _ = write!(self.line, ", {n} failed attempts");
            }
        }
    }

    fn retransmit_columns(&mut self, r: &Retransmit) {
        let dash = || "-".to_owned();
        let retry = match (r.retries, r.retry_limit) {
            (Some(n), Some(limit)) => format!("{n}/{limit}"),
            (Some(n), None) => format!("{n}/-"),
            _ => dash(),
        };
        let _ = write!(self.line, "{:<11} ", state_name(r.state));
        let cause = r.cause.map_or("-", Cause::name);
        match r.cause {
            Some(Cause::Rto | Cause::Syn | Cause::SynAck) => self.push_painted(TROUBLE, cause, 6),
            Some(Cause::Fast) => self.push_painted(NOTICE, cause, 6),
            Some(Cause::Tlp) => self.push_painted(PROBE, cause, 6),
            None => self.push_painted(Paint::new(), cause, 6),
        }
        let _ = write!(
            self.line,
            " {rto:<7} {srtt:<8} {cwnd:<5} {retry:<7}",
            rto = r.rto.map_or_else(dash, human_duration),
            srtt = r.srtt.map_or_else(dash, human_duration),
            cwnd = r.cwnd.map_or_else(dash, |c| c.to_string()),
        );
        if self.sequence {
            let _ = write!(
                self.line,
                " {seq:<10} {segs:<4}",
                seq = r.seq.map_or_else(dash, |s| s.to_string()),
                segs = r.segs.map_or_else(dash, |s| s.to_string()),
            );
        }
        if !r.sent() {
            self.line.push(' ');
            self.push_painted(TROUBLE, &format!("ERR={}", send_error_name(r.err)), 0);
        }
        if r.orphan == Some(true) {
            self.line.push_str(" orphan");
        }
        let trimmed = self.line.trim_end().len();
        self.line.truncate(trimmed);
    }
}

impl<W: Write> Output for Text<W> {
    fn header(&mut self, time: Timestamp) -> io::Result<()> {
        if self.relative_time {
            self.relative_to = Some(time);
        }
        if self.quiet {
            return Ok(());
        }
        if self.count {
            // Tables come later, each with its own heading.
            return Ok(());
        }
        let mut header = format!(
            "{:<12} {} {:<width$} T> {:<width$} {:<11} {:<6} {:<7} {:<8} {:<5} {:<7}",
            "TIME",
            self.owner_heading(),
            "LADDR:LPORT",
            "RADDR:RPORT",
            "STATE",
            "TYPE",
            "RTO",
            "SRTT",
            "CWND",
            "RETRY",
            width = self.endpoint_width,
        );
        if self.sequence {
            header.push_str(" SEQ        SEGS");
        }
        writeln!(self.out, "{}", header.trim_end())
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line.clear();
        match event {
            Event::Retransmit(r) => {
                // bcc's letters: R retransmit, L tail loss probe.
                let kind = if r.cause == Some(Cause::Tlp) {
                    'L'
                } else {
                    'R'
                };
                self.socket_columns(&r.socket, kind);
                self.retransmit_columns(r);
            }
            Event::State(change) => {
                self.socket_columns(&change.socket, 'S');
                self.state_columns(change, true);
            }
            Event::SessionEnd(end) => {
                self.socket_columns(&end.change.socket, 'E');
                self.session_end_columns(end);
            }
            Event::TimeWaitReuse { socket, time_wait } => {
                self.socket_columns(socket, 'S');
                self.push_painted(NOTICE, "TIME_WAIT reused", 0);
                let _ = write!(
                    self.line,
                    " ({} after it entered TIME_WAIT)",
                    human_duration(*time_wait)
                );
            }
            Event::ConnectError { socket, errno } => {
                self.socket_columns(socket, 'C');
                self.push_painted(
                    TROUBLE,
                    &format!("connect failed: {}", errno_name(*errno)),
                    0,
                );
            }
            Event::Reset {
                socket,
                direction,
                state,
            } => {
                self.socket_columns(socket, 'X');
                let _ = write!(self.line, "{} ", state_name(*state));
                self.push_painted(TROUBLE, &format!("reset {}", direction.name()), 0);
            }
            Event::Lost { count, .. } => {
                // Also a notice on stderr (the session's).
                self.push_painted(
                    LOST,
                    &format!("# lost {count} events (ring buffer full)"),
                    0,
                );
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn flows(&mut self, time: Timestamp, flows: &[Session], total: usize) -> io::Result<()> {
        let time = self.time_column(time);
        let shown = if flows.len() < total {
            format!(", the top {}", flows.len())
        } else {
            String::new()
        };
        let flows_word = if total == 1 { "flow" } else { "flows" };
        writeln!(
            self.out,
            "\n{time}: {total} {flows_word} retransmitted{shown}"
        )?;
        let causes: Vec<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
        self.line.clear();
        let owner = self.owner_heading();
        let _ = write!(
            self.line,
            "{owner} {:<width$}    {:<width$} {:>7}",
            "LADDR:LPORT",
            "RADDR:RPORT",
            "RETRANS",
            width = self.endpoint_width,
        );
        for cause in &causes {
            let _ = write!(self.line, " {cause:>6}");
        }
        let _ = write!(self.line, " {:>6} {:>6} {:>7}", "SEGS", "FAILED", "MAX_RTO");
        writeln!(self.out, "{}", self.line)?;
        for flow in flows {
            self.flow_row(&flow.socket, &flow.account);
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Text<W> {
    fn flow_row(&mut self, socket: &Socket, account: &Account) {
        self.line.clear();
        self.owner_and_endpoints(socket, "->");
        let _ = write!(self.line, " {:>7}", account.retransmits());
        for n in account.by_cause {
            let _ = write!(self.line, " {n:>6}");
        }
        let max_rto = account
            .max_rto
            .map_or_else(|| "-".to_owned(), human_duration);
        let _ = writeln!(
            self.line,
            " {:>6} {:>6} {max_rto:>7}",
            account.segments, account.failed
        );
    }
}

/// `10.0.0.1:80`, `[2001:db8::1]:443`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn state_name(state: Option<TcpState>) -> &'static str {
    state.map_or("-", TcpState::name)
}

/// `850us`, `1.23ms`, `12.3ms`, `200ms`, `4.07s`, `2m05s`, `3h12m`.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        0..1_000 => format!("{us}us"),
        1_000..10_000 => format!("{:.2}ms", us as f64 / 1e3),
        10_000..100_000 => format!("{:.1}ms", us as f64 / 1e3),
        100_000..1_000_000 => format!("{:.0}ms", us as f64 / 1e3),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1e6),
        _ => {
            let s = d.as_secs();
            if s < 3600 {
                format!("{}m{:02}s", s / 60, s % 60)
            } else {
                format!("{}h{:02}m", s / 3600, s % 3600 / 60)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        events::{Process, ResetDirection, StateChange},
        fixtures::sample_retransmit,
    };

    fn socket(laddr: IpAddr, raddr: IpAddr, owner: Option<Process>) -> Socket {
        Socket {
            time: "2026-11-22T10:11:12.345678Z".parse::<Timestamp>().unwrap(),
            family: if laddr.is_ipv4() { 4 } else { 6 },
            laddr,
            lport: 40000,
            raddr,
            rport: 80,
            netns: Some(1),
            skaddr: 0xffff,
            owner,
            inode: None,
            cgroup: None,
            identity: None,
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn retransmit(owner: Option<Process>) -> Retransmit {
        sample_retransmit(socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), owner))
    }

    fn render(style: Style, events: &[Event]) -> String {
        let mut buf = Vec::new();
        {
            let mut text = Text::with_time_zone(&mut buf, style, TimeZone::UTC);
            text.header(Timestamp::UNIX_EPOCH).unwrap();
            for e in events {
                text.event(e).unwrap();
            }
            text.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn retransmit_and_state_lines_align_under_the_header() {
        let curl = Process {
            pid: 4242,
            uid: 0,
            comm: "curl".into(),
        };
        let tlp = Retransmit {
            cause: Some(Cause::Tlp),
            retries: Some(0),
            ..retransmit(None)
        };
        let failed = Retransmit {
            err: -16,
            state: Some(TcpState::SynSent),
            cause: Some(Cause::Syn),
            ..retransmit(None)
        };
        let orphan = Retransmit {
            orphan: Some(true),
            state: Some(TcpState::FinWait1),
            retry_limit: Some(8),
            ..retransmit(None)
        };
        let out = render(
            Style::default(),
            &[
                Event::Retransmit(Box::new(retransmit(Some(curl)))),
                Event::State(Box::new(StateChange {
                    socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None),
                    old_state: Some(TcpState::FinWait1),
                    new_state: Some(TcpState::FinWait2),
                    prev_state: Some(Duration::from_micros(1234)),
                    close: None,
                    error: None,
                    orphan: Some(false),
                    opened: None,
                })),
                Event::Retransmit(Box::new(tlp)),
                Event::Retransmit(Box::new(failed)),
                Event::Retransmit(Box::new(orphan)),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "TIME         PID     COMM            IP LADDR:LPORT           T> RADDR:RPORT           STATE       TYPE   RTO     SRTT     CWND  RETRY",
                "10:11:12.345 4242    curl            4  10.0.0.1:40000        R> 10.0.0.2:80           ESTABLISHED RTO    800ms   12.3ms   1     2/15",
                "10:11:12.345 -       -               4  10.0.0.1:40000        S> 10.0.0.2:80           FIN_WAIT1 -> FIN_WAIT2 (1.23ms in FIN_WAIT1)",
                "10:11:12.345 -       -               4  10.0.0.1:40000        L> 10.0.0.2:80           ESTABLISHED TLP    800ms   12.3ms   1     0/15",
                "10:11:12.345 -       -               4  10.0.0.1:40000        R> 10.0.0.2:80           SYN_SENT    SYN    800ms   12.3ms   1     2/15    ERR=-EBUSY",
                "10:11:12.345 -       -               4  10.0.0.1:40000        R> 10.0.0.2:80           FIN_WAIT1   RTO    800ms   12.3ms   1     2/8     orphan",
            ]
        );
    }

    #[test]
    fn closes_and_resets_say_why() {
        let sock = || socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None);
        let close = |old, new, close, error, orphan| {
            Event::State(Box::new(StateChange {
                socket: sock(),
                old_state: Some(old),
                new_state: Some(new),
                prev_state: Some(Duration::from_millis(4)),
                close: Some(close),
                error,
                orphan: Some(orphan),
                opened: None,
            }))
        };
        let out = render(
            Style::default(),
            &[
                close(
                    TcpState::FinWait2,
                    TcpState::TimeWait,
                    Close::TimeWait,
                    None,
                    false,
                ),
                close(
                    TcpState::FinWait2,
                    TcpState::FinWait2,
                    Close::FinWait2Timewait,
                    None,
                    true,
                ),
                close(
                    TcpState::FinWait2,
                    TcpState::Close,
                    Close::TimeWaitOverflow,
                    None,
                    false,
                ),
                close(
                    TcpState::SynSent,
                    TcpState::Close,
                    Close::ResetReceived,
                    Some(111),
                    false,
                ),
                close(
                    TcpState::Established,
                    TcpState::Close,
                    Close::Error,
                    Some(110),
                    false,
                ),
                Event::Reset {
                    socket: Box::new(sock()),
                    direction: ResetDirection::Sent,
                    state: Some(TcpState::Established),
                },
            ],
        );
        let state_column = out.lines().next().unwrap().find("STATE").unwrap();
        let tails: Vec<&str> = out.lines().skip(1).map(|l| &l[state_column..]).collect();
        assert_eq!(
            tails,
            [
                "FIN_WAIT2 -> TIME_WAIT (4.00ms in FIN_WAIT2)",
                "FIN_WAIT2 -> FIN_WAIT2 (4.00ms in FIN_WAIT2) timewait orphan",
                "FIN_WAIT2 -> CLOSE (4.00ms in FIN_WAIT2) TIME_WAIT overflow",
                "SYN_SENT -> CLOSE (4.00ms in SYN_SENT) reset received ECONNREFUSED",
                "ESTABLISHED -> CLOSE (4.00ms in ESTABLISHED) ETIMEDOUT",
                "ESTABLISHED reset sent",
            ]
        );
        assert!(out.lines().last().unwrap().contains(" X> "));
    }

    #[test]
    fn colors_mark_causes_and_troubles_without_moving_columns() {
        let events = [
            Event::Retransmit(Box::new(retransmit(None))),
            Event::Retransmit(Box::new(Retransmit {
                cause: Some(Cause::Fast),
                ..retransmit(None)
            })),
            Event::ConnectError {
                socket: Box::new(socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None)),
                errno: 99,
            },
        ];
        let plain = render(Style::default(), &events);
        let colored = render(
            Style {
                color: true,
                ..Style::default()
            },
            &events,
        );
        assert!(!plain.contains('\x1b'));
        let lines: Vec<&str> = colored.lines().collect();
        assert!(
            lines[1].contains("\x1b[31mRTO\x1b[0m    800ms"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("\x1b[33mFAST\x1b[0m   800ms"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with("\x1b[31mconnect failed: EADDRNOTAVAIL\x1b[0m"),
            "{}",
            lines[3]
        );
        // Without the escapes, the same text.
        let stripped = colored
            .replace("\x1b[31m", "")
            .replace("\x1b[33m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn sequence_columns_and_unknown_fields() {
        let unknown = Retransmit {
            cause: None,
            rto: None,
            srtt: None,
            cwnd: None,
            retries: None,
            retry_limit: None,
            seq: None,
            segs: None,
            ..retransmit(None)
        };
        let style = Style {
            sequence: true,
            ..Style::default()
        };
        let out = render(
            style,
            &[
                Event::Retransmit(Box::new(retransmit(None))),
                Event::Retransmit(Box::new(unknown)),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with("RETRY   SEQ        SEGS"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with("2/15    1000000    2"), "{}", lines[1]);
        assert!(
            lines[2].ends_with("ESTABLISHED -      -       -        -     -       -          -"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_and_fit_wide_columns() {
        assert_eq!(endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 443), "[::1]:443");
        assert_eq!(
            endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), 443),
            "127.0.0.1:443"
        );
        let wide = IpAddr::V6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap());
        let r = Retransmit {
            socket: socket(wide, wide, None),
            ..retransmit(None)
        };
        let out = render(
            Style {
                wide_endpoints: true,
                ..Style::default()
            },
            &[Event::Retransmit(Box::new(r))],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].find("STATE"), lines[1].find("ESTABLISHED"));
    }

    #[test]
    fn a_process_name_can_neither_split_nor_paint_a_line() {
        let named = || {
            Some(Process {
                pid: 4242,
                uid: 0,
                comm: "\x1b[31mRED\nX".into(),
            })
        };
        let out = render(
            Style::default(),
            &[Event::Retransmit(Box::new(retransmit(named())))],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1..],
            [
                r"10:11:12.345 4242    \x1b[31mRED\nX  4  10.0.0.1:40000        R> 10.0.0.2:80           ESTABLISHED RTO    800ms   12.3ms   1     2/15"
            ]
        );

        let mut buf = Vec::new();
        let flow = Session {
            socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), named()),
            opened: None,
            account: Account::default(),
        };
        let mut text = Text::with_time_zone(&mut buf, Style::default(), TimeZone::UTC);
        text.flows(Timestamp::UNIX_EPOCH, &[flow], 1).unwrap();
        text.flush().unwrap();
        drop(text);
        let table = String::from_utf8(buf).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(rows[1].starts_with(r"4242    \x1b[31mRED\nX  4  10.0.0.1:40000"));
        assert_eq!(rows[0].find("IP"), rows[1].find("4  10.0"));
    }

    #[test]
    fn failed_attempts_are_counted_apart_in_session_ends_and_flows() {
        let Event::State(change) =
            crate::fixtures::transition(TcpState::Established, TcpState::Close, 40000, 0)
        else {
            unreachable!("a transition")
        };
        let retransmitted = Account {
            by_cause: [3, 0, 0, 0, 0],
            segments: 3,
            failed: 2,
            max_rto: Some(Duration::from_millis(816)),
            ..Account::default()
        };
        let only_failed = Account {
            failed: 1,
            ..Account::default()
        };
        let ends: Vec<Event> = [retransmitted, only_failed, Account::default()]
            .into_iter()
            .map(|account| {
                Event::SessionEnd(Box::new(SessionEnd {
                    change: (*change).clone(),
                    opened: None,
                    account,
                }))
            })
            .collect();
        let out = render(Style::default(), &ends);
        let tails: Vec<&str> = out
            .lines()
            .skip(1)
            .map(|l| l.split_once("; ").map_or(l, |(_, tail)| tail))
            .collect();
        assert_eq!(
            tails,
            [
                "3 retransmits (RTO 3), 3 segments, max RTO 816ms, 2 failed attempts",
                "no retransmits, 1 failed attempt",
                "no retransmits",
            ]
        );

        let mut buf = Vec::new();
        {
            let mut text = Text::with_time_zone(&mut buf, Style::default(), TimeZone::UTC);
            let flow = Session {
                socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None),
                opened: None,
                account: retransmitted,
            };
            text.flows(Timestamp::UNIX_EPOCH, &[flow], 1).unwrap();
            text.flush().unwrap();
        }
        let table = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = table.lines().skip(2).collect();
        assert!(
            lines[0].ends_with("RETRANS    RTO   FAST    TLP    SYN SYNACK   SEGS FAILED MAX_RTO"),
            "{table}"
        );
        assert!(
            lines[1].ends_with("      3      3      0      0      0      0      3      2   816ms"),
            "{table}"
        );
    }

    #[test]
    fn the_pod_column_names_a_pod_or_else_a_container() {
        let with = |pod: Option<&str>, container: Option<&str>| {
            let mut r = retransmit(None);
            r.socket.identity = Some(std::sync::Arc::new(crate::identity::Identity {
                container_id: container.map(str::to_owned),
                pod_namespace: pod.map(|_| "shop".to_owned()),
                pod: pod.map(str::to_owned),
                ..Default::default()
            }));
            Event::Retransmit(Box::new(r))
        };
        let container = "0123456789ab".repeat(5) + "cdef";
        let out = render(
            Style {
                pod: true,
                ..Style::default()
            },
            &[
                with(Some("cart-7d9f"), Some(&container)),
                with(None, Some(&container)),
                with(Some("a\x1b[31mred"), None),
                Event::Retransmit(Box::new(retransmit(None))),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        let pod_at = lines[0].find("POD").expect("a POD heading");
        assert_eq!(lines[0].find(" IP "), Some(pod_at + POD_WIDTH));
        let pods: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l[pod_at..].split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            pods,
            ["shop/cart-7d9f", "0123456789ab", "shop/a\\x1b[31mred", "-"]
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_micros(850)), "850us");
        assert_eq!(human_duration(Duration::from_micros(1234)), "1.23ms");
        assert_eq!(human_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(human_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(human_duration(Duration::from_millis(4070)), "4.07s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3h12m"
        );
    }
}
