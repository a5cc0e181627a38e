//! JSON Lines: one object per event, one schema for all kinds. Field names
//! are documented in the README and stable.
use std::{
    collections::BTreeMap,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use jiff::Timestamp;
use serde::{Serialize, Serializer};

use super::{Output, errno_name};
use crate::decode::{Account, Cause, Close, Event, Retransmit, Socket, StateChange, TcpState};
use crate::{loader::MapEntries, netns::Occupancy, sessions::Session, summary::Summary};

pub struct Json<W: Write> {
    out: BufWriter<W>,
    /// No `start` event.
    quiet: bool,
}

impl<W: Write> Json<W> {
    pub fn new(writer: W, quiet: bool) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, writer),
            quiet,
        }
    }
}

/// Fields every socket event has; unknown values are `null`, never guessed.
#[derive(Serialize)]
struct SocketFields<'a> {
    family: u8,
    laddr: IpAddr,
    lport: u16,
    raddr: IpAddr,
    rport: u16,
    netns: Option<u32>,
    skaddr: Hex,
    pid: Option<u32>,
    uid: Option<u32>,
    comm: Option<&'a str>,
}

impl<'a> SocketFields<'a> {
    fn new(s: &'a Socket) -> Self {
        Self {
            family: s.family,
            laddr: s.laddr,
            lport: s.lport,
            raddr: s.raddr,
            rport: s.rport,
            netns: s.netns,
            skaddr: Hex(s.skaddr),
            pid: s.owner.as_ref().map(|p| p.pid),
            uid: s.owner.as_ref().map(|p| p.uid),
            comm: s.owner.as_ref().map(|p| p.comm.as_str()),
        }
    }
}

/// Retransmission fields; `null` where this kernel could not tell.
#[derive(Serialize)]
struct RetransmitFields {
    state: Option<&'static str>,
    err: i32,
    #[serde(rename = "type")]
    cause: Option<&'static str>,
    rto_ms: Option<f64>,
    backoff: Option<u8>,
    retries: Option<u32>,
    retry_limit: Option<u32>,
    total_retrans: Option<u32>,
    srtt_us: Option<u64>,
    rttvar_us: Option<u64>,
    cwnd: Option<u32>,
    ssthresh: Option<u32>,
    segs: Option<u16>,
    bytes: Option<u32>,
    seq: Option<u32>,
    orphan: Option<bool>,
}

impl RetransmitFields {
    fn new(r: &Retransmit) -> Self {
        let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
        Self {
            state: name(r.state),
            err: r.err,
            cause: r.cause.map(Cause::name),
            rto_ms: r.rto.map(|d| d.as_micros() as f64 / 1e3),
            backoff: r.backoff,
            retries: r.retries,
            retry_limit: r.retry_limit,
            total_retrans: r.total_retrans,
            srtt_us: us(r.srtt),
            rttvar_us: us(r.rttvar),
            cwnd: r.cwnd,
            ssthresh: r.ssthresh,
            segs: r.segs,
            bytes: r.bytes,
            seq: r.seq,
            orphan: r.orphan,
        }
    }
}

/// A connection's (or flow's) retransmissions.
#[derive(Serialize)]
struct AccountFields {
    retransmits: u64,
    /// Count by `type` name, only the causes seen.
    by_type: BTreeMap<&'static str, u64>,
    segments: u64,
    max_rto_ms: Option<f64>,
    first_retransmit: Option<Time>,
    last_retransmit: Option<Time>,
}

impl AccountFields {
    fn new(a: &Account) -> Self {
        Self {
            retransmits: a.retransmits(),
            by_type: a.causes().collect(),
            segments: a.segments,
            max_rto_ms: a.max_rto.map(ms),
            first_retransmit: a.first.map(Time),
            last_retransmit: a.last.map(Time),
        }
    }
}

/// How a transition reads, in `state` and `session_end` lines.
#[derive(Serialize)]
struct TransitionFields {
    old_state: Option<&'static str>,
    new_state: Option<&'static str>,
    close: Option<&'static str>,
    error: Option<String>,
    orphan: Option<bool>,
}

impl TransitionFields {
    fn new(change: &StateChange) -> Self {
        Self {
            old_state: name(change.old_state),
            new_state: name(change.new_state),
            close: change.close.map(Close::name),
            error: change.error.map(errno_name),
            orphan: change.orphan,
        }
    }
}

/// With `-c`: one line per flow of the table.
#[derive(Serialize)]
struct FlowLine<'a> {
    event: &'static str,
    time: Time,
    /// 1 for the flow with the most retransmits.
    rank: usize,
    /// Flows in the table, including those `--top` left out.
    flows: usize,
    #[serde(flatten)]
    socket: SocketFields<'a>,
    #[serde(flatten)]
    account: AccountFields,
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// RFC 3339 with microseconds, written straight into the output (a line
/// per event must not allocate per field).
#[derive(Clone, Copy)]
struct Time(Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:.6}", self.0))
    }
}

/// `0xffff8881062c9280`, written straight into the output.
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Details {
    Retransmit(RetransmitFields),
    State {
        #[serde(flatten)]
        transition: TransitionFields,
        prev_state_ms: Option<f64>,
    },
    SessionEnd {
        #[serde(flatten)]
        transition: TransitionFields,
        /// When the connection began; `null` if before the tool started.
        opened: Option<Time>,
        duration_ms: Option<f64>,
        #[serde(flatten)]
        account: AccountFields,
    },
    Reset {
        direction: &'static str,
        state: Option<&'static str>,
    },
    ConnectError {
        error: String,
    },
    TimeWaitReuse {
        time_wait_ms: f64,
    },
    Lost {
        count: u64,
    },
}

/// Last line of a `--state` session.
#[derive(Serialize)]
struct SummaryLine<'a> {
    event: &'static str,
    time: Time,
    events: u64,
    lost: u64,
    /// Of `lost`: program runs the kernel skipped (the rest found the ring
    /// buffer full).
    lost_skipped: u64,
    transitions: Vec<Transition>,
    netns: Vec<&'a Occupancy>,
    kernel_maps: Option<MapEntries>,
}

#[derive(Serialize)]
struct Transition {
    old_state: &'static str,
    new_state: &'static str,
    count: u64,
}

/// First line of a session: capture starts now.
#[derive(Serialize)]
struct Start {
    event: &'static str,
    time: Time,
    version: &'static str,
}

#[derive(Serialize)]
struct Line<'a> {
    event: &'static str,
    time: Time,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    socket: Option<SocketFields<'a>>,
    #[serde(flatten)]
    details: Details,
}

fn name(state: Option<TcpState>) -> Option<&'static str> {
    state.map(TcpState::name)
}

impl<'a> Line<'a> {
    fn new(event: &'a Event) -> Self {
        let (at, socket, details) = match event {
            Event::Retransmit(r) => (
                r.socket.time,
                Some(&r.socket),
                Details::Retransmit(RetransmitFields::new(r)),
            ),
            Event::State(change) => (
                change.socket.time,
                Some(&change.socket),
                Details::State {
                    transition: TransitionFields::new(change),
                    prev_state_ms: change.prev_state.map(ms),
                },
            ),
            Event::SessionEnd(end) => (
                end.change.socket.time,
                Some(&end.change.socket),
                Details::SessionEnd {
                    transition: TransitionFields::new(&end.change),
                    opened: end.opened.map(Time),
                    duration_ms: end
                        .opened
                        .map(|t| ms(end.change.socket.time.duration_since(t).unsigned_abs())),
                    account: AccountFields::new(&end.account),
                },
            ),
            Event::TimeWaitReuse { socket, time_wait } => (
                socket.time,
                Some(socket),
                Details::TimeWaitReuse {
                    time_wait_ms: ms(*time_wait),
                },
            ),
            Event::ConnectError { socket, errno } => (
                socket.time,
                Some(socket),
                Details::ConnectError {
                    error: errno_name(*errno),
                },
            ),
            Event::Reset {
                socket,
                direction,
                state,
            } => (
                socket.time,
                Some(socket),
                Details::Reset {
                    direction: direction.name(),
                    state: name(*state),
                },
            ),
            Event::Lost { time, count } => (*time, None, Details::Lost { count: *count }),
        };
        Self {
            event: event.name(),
            time: Time(at),
            socket: socket.map(SocketFields::new),
            details,
        }
    }
}

impl<W: Write> Output for Json<W> {
    fn header(&mut self, at: Timestamp) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let start = Start {
            event: "start",
            time: Time(at),
            version: env!("CARGO_PKG_VERSION"),
        };
        serde_json::to_writer(&mut self.out, &start)?;
        self.out.write_all(b"\n")
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &Line::new(event))?;
        self.out.write_all(b"\n")
    }

    fn flows(&mut self, at: Timestamp, flows: &[Session], total: usize) -> io::Result<()> {
        for (i, flow) in flows.iter().enumerate() {
            let line = FlowLine {
                event: "flow",
                time: Time(at),
                rank: i + 1,
                flows: total,
                socket: SocketFields::new(&flow.socket),
                account: AccountFields::new(&flow.account),
            };
            serde_json::to_writer(&mut self.out, &line)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let line = SummaryLine {
            event: "summary",
            time: Time(Timestamp::now()),
            events: summary.events,
            lost: summary.lost,
            lost_skipped: summary.lost_skipped,
            transitions: summary
                .transitions
                .iter()
                .map(|(&(old_state, new_state), &count)| Transition {
                    old_state,
                    new_state,
                    count,
                })
                .collect(),
            netns: summary
                .occupancy
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .collect(),
            kernel_maps: summary.kernel_maps,
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use serde_json::{Value, json};

    use super::*;
    use crate::decode::{Process, ResetDirection, StateChange, tests::sample_retransmit};

    fn render(event: &Event) -> Value {
        let mut buf = Vec::new();
        {
            let mut out = Json::new(&mut buf, false);
            out.event(event).unwrap();
            out.flush().unwrap();
        }
        assert_eq!(
            buf.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one line per event"
        );
        serde_json::from_slice(&buf).unwrap()
    }

    fn socket(owner: Option<Process>) -> Socket {
        Socket {
            time: "2026-11-22T10:11:12.345678901Z"
                .parse::<Timestamp>()
                .unwrap(),
            family: 6,
            laddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            lport: 40000,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            rport: 80,
            netns: Some(4026532289),
            skaddr: 0xffff_8880_0abc_d000,
            owner,
            inode: None,
        }
    }

    #[test]
    fn retransmit_schema() {
        let owner = Process {
            pid: 7,
            uid: 0,
            comm: "nginx".into(),
        };
        let r = sample_retransmit(socket(Some(owner)));
        let v = render(&Event::Retransmit(Box::new(r)));
        assert_eq!(
            v,
            json!({
                "event": "retransmit", "time": "2026-11-22T10:11:12.345678Z", "family": 6,
                "laddr": "::1", "lport": 40000, "raddr": "10.0.0.2", "rport": 80,
                "netns": 4026532289u32, "skaddr": "0xffff88800abcd000",
                "pid": 7, "uid": 0, "comm": "nginx", "state": "ESTABLISHED", "err": 0,
                "type": "RTO", "rto_ms": 800.0, "backoff": 2, "retries": 2, "retry_limit": 15,
                "total_retrans": 9, "srtt_us": 12345, "rttvar_us": 3000, "cwnd": 1, "ssthresh": 7,
                "segs": 2, "bytes": 2896, "seq": 1000000, "orphan": false
            })
        );
    }

    fn change(old_state: Option<TcpState>, new_state: Option<TcpState>) -> StateChange {
        StateChange {
            socket: socket(None),
            old_state,
            new_state,
            prev_state: None,
            close: None,
            error: None,
            orphan: None,
        }
    }

    #[test]
    fn state_schema_with_unknowns_as_null() {
        let established = StateChange {
            prev_state: Some(Duration::from_micros(1500)),
            orphan: Some(false),
            ..change(Some(TcpState::SynSent), Some(TcpState::Established))
        };
        let v = render(&Event::State(Box::new(established)));
        assert_eq!(v["event"], "state");
        assert_eq!(
            (v["old_state"].as_str(), v["new_state"].as_str()),
            (Some("SYN_SENT"), Some("ESTABLISHED"))
        );
        assert_eq!(
            (v["prev_state_ms"].clone(), v["orphan"].clone()),
            (json!(1.5), json!(false))
        );
        for null in ["pid", "comm", "close", "error"] {
            assert_eq!(v[null], Value::Null, "{null}");
        }
        let v = render(&Event::State(Box::new(change(None, None))));
        assert_eq!(
            (v["prev_state_ms"].clone(), v["orphan"].clone()),
            (Value::Null, Value::Null)
        );
    }

    #[test]
    fn closes_name_their_reason_and_error() {
        let timed_out = StateChange {
            close: Some(Close::Error),
            error: Some(110),
            ..change(Some(TcpState::Established), Some(TcpState::Close))
        };
        let v = render(&Event::State(Box::new(timed_out)));
        assert_eq!(
            (v["close"].as_str(), v["error"].as_str()),
            (Some("error"), Some("ETIMEDOUT"))
        );
        let overflow = StateChange {
            close: Some(Close::TimeWaitOverflow),
            ..change(Some(TcpState::FinWait2), Some(TcpState::Close))
        };
        let v = render(&Event::State(Box::new(overflow)));
        assert_eq!(
            (v["event"].as_str(), v["close"].as_str()),
            (Some("time_wait_overflow"), Some("time_wait_overflow"))
        );
        assert_eq!(v["lport"], 40000, "with its 4-tuple");
    }

    #[test]
    fn reset_schema() {
        let v = render(&Event::Reset {
            socket: socket(None),
            direction: ResetDirection::Received,
            state: Some(TcpState::SynSent),
        });
        assert_eq!(
            (
                v["event"].as_str(),
                v["direction"].as_str(),
                v["state"].as_str()
            ),
            (Some("reset"), Some("received"), Some("SYN_SENT"))
        );
        assert_eq!(v["rport"], 80);
    }

    #[test]
    fn start_event_opens_the_stream() {
        let mut buf = Vec::new();
        {
            let mut out = Json::new(&mut buf, false);
            out.header("2026-11-22T10:11:12Z".parse().unwrap()).unwrap();
            out.flush().unwrap();
        }
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            json!({"event": "start", "time": "2026-11-22T10:11:12.000000Z", "version": env!("CARGO_PKG_VERSION")})
        );
    }

    #[test]
    fn lost_schema() {
        let time = "2026-11-22T10:11:12Z".parse().unwrap();
        let v = render(&Event::Lost { time, count: 12 });
        assert_eq!(
            v,
            json!({"event": "lost", "time": "2026-11-22T10:11:12.000000Z", "count": 12})
        );
    }
}
