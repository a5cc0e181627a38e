//! One aligned line per event, bcc-compatible columns first.
use std::{
    fmt::Write as _,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use jiff::{Timestamp, tz::TimeZone};

use super::Output;
use crate::decode::{Event, Socket, TcpState};

/// Wide enough for `255.255.255.255:65535`; IPv6 endpoints widen their line.
const ENDPOINT_WIDTH: usize = 21;
const COMM_WIDTH: usize = 15;

pub struct Text<W: Write> {
    out: BufWriter<W>,
    tz: TimeZone,
    line: String,
}

impl<W: Write> Text<W> {
    pub fn new(writer: W) -> Self {
        Self::with_time_zone(writer, TimeZone::system())
    }

    pub fn with_time_zone(writer: W, tz: TimeZone) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, writer),
            tz,
            line: String::with_capacity(256),
        }
    }

    fn socket_columns(&mut self, socket: &Socket, kind: char) {
        let time = socket
            .time
            .to_zoned(self.tz.clone())
            .strftime("%H:%M:%S%.3f");
        let (pid, comm) = match &socket.owner {
            Some(p) => (p.pid.to_string(), p.comm.as_str()),
            None => ("-".to_owned(), "-"),
        };
        let _ = write!(
            self.line,
            "{time:<12} {pid:<7} {comm:<COMM_WIDTH$} {family:<2} {local:<ENDPOINT_WIDTH$} {kind}> {remote:<ENDPOINT_WIDTH$} ",
            family = socket.family,
            local = endpoint(socket.laddr, socket.lport),
            remote = endpoint(socket.raddr, socket.rport),
        );
    }
}

impl<W: Write> Output for Text<W> {
    fn header(&mut self, _time: Timestamp) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<12} {:<7} {:<COMM_WIDTH$} {:<2} {:<ENDPOINT_WIDTH$} T> {:<ENDPOINT_WIDTH$} STATE",
            "TIME", "PID", "COMM", "IP", "LADDR:LPORT", "RADDR:RPORT"
        )
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line.clear();
        match event {
            Event::Retransmit { socket, state, err } => {
                self.socket_columns(socket, 'R');
                self.line.push_str(state_name(*state));
                if *err != 0 {
                    let _ = write!(self.line, " ERR={}", errno_name(*err));
                }
            }
            Event::State {
                socket,
                old_state,
                new_state,
                prev_state,
            } => {
                self.socket_columns(socket, 'S');
                let _ = write!(
                    self.line,
                    "{} -> {}",
                    state_name(*old_state),
                    state_name(*new_state)
                );
                if let Some(d) = prev_state {
                    let _ = write!(
                        self.line,
                        " ({} in {})",
                        human_duration(*d),
                        state_name(*old_state)
                    );
                }
            }
            Event::Lost { count, .. } => {
                // Also on stderr: a person watching must not miss it, and it
                // must not break a table piped into another tool.
                eprintln!("tcpretrans: lost {count} events (ring buffer full)");
                let _ = write!(self.line, "# lost {count} events (ring buffer full)");
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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

/// `-EBUSY` for the errors a retransmit attempt can fail with, else the number.
pub fn errno_name(err: i32) -> String {
    let name = match -err {
        libc_errno::EAGAIN => "EAGAIN",
        libc_errno::ENOMEM => "ENOMEM",
        libc_errno::EBUSY => "EBUSY",
        libc_errno::EHOSTUNREACH => "EHOSTUNREACH",
        libc_errno::ENOBUFS => "ENOBUFS",
        _ => return err.to_string(),
    };
    format!("-{name}")
}

mod libc_errno {
    pub const EAGAIN: i32 = nix::errno::Errno::EAGAIN as i32;
    pub const ENOMEM: i32 = nix::errno::Errno::ENOMEM as i32;
    pub const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;
    pub const EHOSTUNREACH: i32 = nix::errno::Errno::EHOSTUNREACH as i32;
    pub const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;
}

/// `850us`, `12.3ms`, `4.07s`, `2m05s`, `3h12m`.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        0..1_000 => format!("{us}us"),
        1_000..10_000 => format!("{:.2}ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
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
    use crate::decode::Process;

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
        }
    }

    fn render(events: &[Event]) -> String {
        let mut buf = Vec::new();
        {
            let mut text = Text::with_time_zone(&mut buf, TimeZone::UTC);
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
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let curl = Process {
            pid: 4242,
            uid: 0,
            comm: "curl".into(),
        };
        let out = render(&[
            Event::Retransmit {
                socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), Some(curl)),
                state: Some(TcpState::Established),
                err: 0,
            },
            Event::State {
                socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None),
                old_state: Some(TcpState::FinWait1),
                new_state: Some(TcpState::FinWait2),
                prev_state: Some(Duration::from_micros(1234)),
            },
            Event::Retransmit {
                socket: socket(v4(10, 0, 0, 1), v4(10, 0, 0, 2), None),
                state: Some(TcpState::SynSent),
                err: -16,
            },
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TIME         PID     COMM            IP LADDR:LPORT           T> RADDR:RPORT           STATE"
        );
        assert_eq!(
            lines[1],
            "10:11:12.345 4242    curl            4  10.0.0.1:40000        R> 10.0.0.2:80           ESTABLISHED"
        );
        assert_eq!(
            lines[2],
            "10:11:12.345 -       -               4  10.0.0.1:40000        S> 10.0.0.2:80           FIN_WAIT1 -> FIN_WAIT2 (1.23ms in FIN_WAIT1)"
        );
        assert!(
            lines[3].ends_with("R> 10.0.0.2:80           SYN_SENT ERR=-EBUSY"),
            "{}",
            lines[3]
        );
        let state_col = lines[0].find("STATE").unwrap();
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.len() > state_col && &l[state_col - 1..state_col] == " ")
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 443), "[::1]:443");
        assert_eq!(
            endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), 443),
            "127.0.0.1:443"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_micros(850)), "850us");
        assert_eq!(human_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(human_duration(Duration::from_millis(4070)), "4.07s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3h12m"
        );
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(-16), "-EBUSY");
        assert_eq!(errno_name(-11), "-EAGAIN");
        assert_eq!(errno_name(-9999), "-9999");
    }
}
