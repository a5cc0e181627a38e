//! Command line.
use std::{
    env,
    ffi::OsStr,
    io::{self, IsTerminal as _},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use clap::{ArgAction, Parser, ValueEnum};
use tcpretrans_common::{AF_INET, AF_INET6, tcp_state};

use tcpretrans_common::{AddrPrefix, Filter, filter_flags};

use crate::{
    cgroup::{self, Cgroup},
    events::{Close, Event, Process, StateChange, TcpState},
    generate::Generated,
    identity,
    metrics::{self, Dimensions, Endpoint},
    netns,
    output::Style,
};

/// Shown at the end of `--help` and in the man page.
pub const EXAMPLES: [(&str, &str); 9] = [
    ("tcpretrans", "every TCP retransmission on the host"),
    ("tcpretrans --state", "... and every TCP state transition"),
    (
        "tcpretrans --state=fin_wait,time_wait",
        "only transitions into or out of these states",
    ),
    (
        "tcpretrans --json --netns 4026532289",
        "JSON Lines for one network namespace",
    ),
    (
        "tcpretrans -p 1234 -P 443",
        "one process's connections on port 443",
    ),
    (
        "tcpretrans -4 --duration 60",
        "IPv4 only, stop after a minute",
    ),
    ("tcpretrans -s", "with sequence numbers and segment counts"),
    (
        "tcpretrans -c -i 10 --top 20",
        "the 20 flows retransmitting most, every 10 s",
    ),
    (
        "tcpretrans --check",
        "what this kernel offers; exit 0 if it can trace",
    ),
];

// Option groups in --help and the man page.
const EVENTS: &str = "Events";
const FILTERS: &str = "Filters (in the kernel where possible)";
const OUTPUT: &str = "Output";
const SESSION: &str = "Session";
const METRICS: &str = "Metrics (Prometheus)";

/// Exit statuses, for runbooks: documented in `--help`, the man page and
/// the README.
pub mod exit_status {
    pub const SUCCESS: u8 = 0;
    pub const FAILURE: u8 = 1;
    /// clap's own status for usage errors.
    pub const USAGE: u8 = 2;
    /// The session ran, but the kernel side lost events (reported as they
    /// happened and in the summary).
    pub const EVENTS_LOST: u8 = 3;
    /// The session ran and lost nothing it was given, but the kernel counted
    /// retransmitted segments it never gave the programs (it runs no BPF
    /// program in some contexts): the summary says how many. Apart from 3,
    /// which a larger `--ring-size` can cure and this cannot.
    pub const EVENTS_NOT_SEEN: u8 = 4;

    pub const MEANINGS: [(u8, &str); 5] = [
        (
            SUCCESS,
            "traced until stopped (Ctrl-C, SIGTERM, --duration, closed output) and lost nothing",
        ),
        (
            FAILURE,
            "could not trace: not privileged, kernel support missing, output failed",
        ),
        (USAGE, "bad arguments"),
        (
            EVENTS_LOST,
            "traced, but events were lost (counted and reported)",
        ),
        (
            EVENTS_NOT_SEEN,
            "traced and lost nothing, but the kernel counted retransmitted segments it gave no program (the summary compares)",
        ),
    ];
}

fn after_help() -> String {
    let mut text = String::from("Examples:\n");
    for (command, what) in EXAMPLES {
        text.push_str(&format!("  {command:<40} # {what}\n"));
    }
    text.push_str("\nExit status:\n");
    for (status, meaning) in exit_status::MEANINGS {
        text.push_str(&format!("  {status}  {meaning}\n"));
    }
    text
}

/// Trace TCP retransmissions and state changes, live, with eBPF.
///
/// Every retransmission with its cause (RTO, fast retransmit, tail loss
/// probe, SYN or SYN-ACK retry), the connection's RTO, RTT, cwnd and spent
/// retry budget, and the process owning the socket. With --state, the
/// connection lifecycle: state transitions, TIME_WAIT entry, overflow and
/// reuse, resets, failed connects and how each connection ended.
#[derive(Debug, Parser)]
#[command(name = "tcpretrans", version, about, long_about, after_help = after_help())]
pub struct Args {
    /// Also show TCP state transitions; LIST (comma separated, e.g.
    /// `fin_wait1,time_wait`; `fin_wait` means both FIN_WAIT states) keeps
    /// only the lifecycle events entering or leaving those states: TIME_WAIT
    /// entries, overflows and reuses, resets in them, and the ends of the
    /// connections whose last transition did.
    #[arg(
        help_heading = EVENTS,
        long,
        value_name = "LIST",
        num_args = 0..=1,
        default_missing_value = "all",
        value_parser = parse_state_list
    )]
    pub state: Option<StateMask>,

    /// Add the SEQ and SEGS columns (sequence number and segment count of
    /// each retransmitted skb).
    #[arg(help_heading = EVENTS, short = 's', long)]
    pub sequence: bool,

    /// No line per event: a table of flows (connections) with their owner
    /// and retransmits by cause, most first, at exit (and every --interval).
    #[arg(help_heading = EVENTS, short = 'c', long, conflicts_with_all = ["state", "sequence"])]
    pub count: bool,

    /// With -c: print the table every SECS seconds, counting afresh each time.
    #[arg(help_heading = EVENTS, short = 'i', long, value_name = "SECS", requires = "count", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// With -c: only the N flows with the most retransmits.
    #[arg(help_heading = EVENTS, long, value_name = "N", requires = "count", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,

    /// Only sockets owned by this process.
    #[arg(help_heading = FILTERS, short = 'p', long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Only sockets owned by a process with this name (as in /proc/PID/comm).
    #[arg(help_heading = FILTERS, long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Only connections with this port on either side.
    #[arg(help_heading = FILTERS, short = 'P', long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Only connections with this local port.
    #[arg(help_heading = FILTERS, long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub lport: Option<u16>,

    /// Only connections with this remote port.
    #[arg(help_heading = FILTERS, long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub rport: Option<u16>,

    /// Only connections whose local address is in ADDR[/PREFIX].
    #[arg(help_heading = FILTERS, long, value_name = "ADDR[/PREFIX]", value_parser = parse_prefix)]
    pub laddr: Option<AddrPrefix>,

    /// Only connections whose remote address is in ADDR[/PREFIX].
    #[arg(help_heading = FILTERS, long, value_name = "ADDR[/PREFIX]", value_parser = parse_prefix)]
    pub raddr: Option<AddrPrefix>,

    /// IPv4 only.
    #[arg(help_heading = FILTERS, short = '4', long = "ipv4", conflicts_with = "ipv6", action = ArgAction::SetTrue)]
    pub ipv4: bool,

    /// IPv6 only.
    #[arg(help_heading = FILTERS, short = '6', long = "ipv6", action = ArgAction::SetTrue)]
    pub ipv6: bool,

    /// Only sockets in this network namespace: its inode number (as in
    /// `ls -Li /proc/PID/ns/net`), its `ip netns` name, or a path to it.
    #[arg(help_heading = FILTERS, long, value_name = "NETNS", value_parser = netns::parse)]
    pub netns: Option<u32>,

    /// Only sockets created in this cgroup v2 directory or below it (an
    /// accepted socket belongs to its listener's cgroup).
    #[arg(help_heading = FILTERS, long, value_name = "PATH", value_parser = cgroup::parse)]
    pub cgroup: Option<Cgroup>,

    /// Print JSON Lines: one object per event.
    #[arg(help_heading = OUTPUT, long)]
    pub json: bool,

    /// TIME as seconds since tracing started (default: wall clock, -T).
    #[arg(help_heading = OUTPUT, short = 't', long = "relative-time", conflicts_with = "wall_time")]
    pub relative_time: bool,

    /// TIME as wall clock, HH:MM:SS.mmm (the default).
    #[arg(help_heading = OUTPUT, short = 'T', long = "wall-time")]
    pub wall_time: bool,

    /// No header and no exit summary: only events (and losses, which are
    /// never silent). With --metrics, no events either: a quiet exporter.
    #[arg(help_heading = OUTPUT, short = 'q', long)]
    pub quiet: bool,

    /// Add a POD column: the socket's Kubernetes pod as namespace/name, or
    /// its container's id (12 digits), from its cgroup.
    #[arg(help_heading = OUTPUT, long)]
    pub pod: bool,

    /// Color causes and troubles in text output: `auto` when stdout is a
    /// terminal and NO_COLOR is not set.
    #[arg(help_heading = OUTPUT, long, value_name = "WHEN", default_value = "auto")]
    pub color: ColorWhen,

    /// Stop after this many seconds.
    #[arg(help_heading = SESSION, long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Size of the ring buffer the kernel side queues events in, e.g.
    /// `4M` (the default), `64K`, `16M`: a power of two, at least a page.
    /// Events that find it full are counted as lost and reported.
    #[arg(help_heading = SESSION, long, value_name = "BYTES", default_value = "4M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Sockets the kernel side keeps state for (owner, time in state, ...):
    /// an LRU map, entries leave when their socket closes. Raise it on a
    /// host with more open TCP sockets than this.
    #[arg(help_heading = SESSION, long, value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1024..=1 << 24))]
    pub max_sockets: u32,

    /// Serve Prometheus metrics of every retransmission and transition at
    /// http://[ADDR:]PORT/metrics while tracing (PORT alone: every IPv4
    /// address), with /healthz and /readyz for probes.
    #[arg(help_heading = METRICS, long, value_name = "[ADDR:]PORT", value_parser = metrics::parse_endpoint, conflicts_with = "count")]
    pub metrics: Option<Endpoint>,

    /// Label the metrics of connections by LIST (comma separated):
    /// container, pod, namespace (the pod's), comm, netns, lport, rport,
    /// raddr (raddr/24 cuts IPv4 addresses to /24 and IPv6 ones to /64;
    /// raddr/24/48 says both). None by default.
    #[arg(help_heading = METRICS, long, value_name = "LIST", requires = "metrics", value_parser = metrics::parse_dimensions)]
    pub metrics_by: Option<Dimensions>,

    /// At most N series labelled by --metrics-by; the events of any further
    /// connection count under the label value `other` (and in
    /// tcpretrans_folded_events_total).
    #[arg(help_heading = METRICS, long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series: u32,

    /// The cgroup2 hierarchy that names sockets' containers and pods
    /// (default: the one mounted here, as /proc/self/mountinfo says; a
    /// container sees the node's where it is mounted, e.g.
    /// /host/sys/fs/cgroup, or its `unified` directory on a hybrid host).
    #[arg(help_heading = SESSION, long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// The kubelet's pod log directory: its <namespace>_<name>_<uid>
    /// entries name the pods (no log is read).
    #[arg(help_heading = SESSION, long, value_name = "DIR", default_value = identity::PODS)]
    pub pods_dir: PathBuf,

    /// Read kernel type information from FILE instead of /sys/kernel/btf/vmlinux.
    #[arg(help_heading = SESSION, long, value_name = "FILE")]
    pub btf: Option<PathBuf>,

    /// Print what this kernel offers the tool (tracepoints, BTF members, HZ,
    /// privileges, TCP sysctls) and exit: 0 when it can trace here.
    #[arg(help_heading = SESSION, long)]
    pub check: bool,

    /// Write the man page or a shell's completions to stdout and exit
    /// (`cargo xtask dist` writes them all).
    #[arg(help_heading = SESSION, long, value_name = "KIND", hide = true)]
    pub generate: Option<Generated>,
}

/// When text output is colored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

impl ColorWhen {
    /// `auto` follows the terminal and the NO_COLOR convention (set and
    /// not empty means no color); an explicit choice wins over both.
    pub fn enabled(self, terminal: bool, no_color: Option<&OsStr>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => terminal && no_color.is_none_or(OsStr::is_empty),
        }
    }
}

/// Bit `1 << state` per selected TCP state; 0 selects all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(pub u16);

impl StateMask {
    fn has(self, state: Option<TcpState>) -> bool {
        state.is_some_and(|s| self.0 & 1 << s as u8 != 0)
    }

    /// Whether an event shows under this selection: a lifecycle event that
    /// enters or leaves a selected state, as the tool shows the states (a
    /// connection handed to a timewait socket enters TIME_WAIT; an overflow
    /// is a TIME_WAIT entry refused; a reuse leaves TIME_WAIT). The kernel
    /// side's filter (`Filter::keeps_transition`) passes a superset of the
    /// transitions. Retransmissions and failed connects are not lifecycle
    /// events: every one shows.
    pub fn shows(self, event: &Event) -> bool {
        let touches = |change: &StateChange| {
            self.has(change.old_state)
                || self.has(change.new_state)
                || change.close == Some(Close::TimeWaitOverflow)
                    && self.has(Some(TcpState::TimeWait))
        };
        self.0 == 0
            || match event {
                Event::State(change) => touches(change),
                Event::SessionEnd(end) => touches(&end.change),
                Event::TimeWaitReuse { .. } => self.has(Some(TcpState::TimeWait)),
                Event::Reset { state, .. } => self.has(*state),
                Event::Retransmit(_) | Event::ConnectError { .. } | Event::Lost { .. } => true,
            }
    }
}

impl Args {
    pub fn style(&self) -> Style {
        Style {
            json: self.json,
            sequence: self.sequence,
            wide_endpoints: self.ipv6,
            count: self.count,
            relative_time: self.relative_time,
            quiet: self.quiet,
            pod: self.pod,
            color: !self.json
                && self.color.enabled(
                    io::stdout().is_terminal(),
                    env::var_os("NO_COLOR").as_deref(),
                ),
        }
    }

    /// What the kernel side is asked to keep.
    pub fn filter(&self) -> Filter {
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => AF_INET,
            (_, true) => AF_INET6,
            _ => 0,
        };
        Filter {
            netns: self.netns.unwrap_or(0),
            family,
            state_mask: self.state.map_or(0, |m| m.0),
            // The metrics count transitions whatever is printed.
            flags: if self.state.is_some() || self.metrics.is_some() {
                filter_flags::STATE_EVENTS
            } else {
                0
            } | if self.identifies() {
                filter_flags::CGROUP_IDS
            } else {
                0
            } | if self.kernel_counts_transitions() {
                filter_flags::COUNT_TRANSITIONS
            } else {
                0
            },
            lport: self.lport.unwrap_or(0),
            rport: self.rport.unwrap_or(0),
            port: self.port.unwrap_or(0),
            _pad: 0,
            pid: self.pid.unwrap_or(0),
            laddr: self.laddr.unwrap_or(AddrPrefix::ANY),
            raddr: self.raddr.unwrap_or(AddrPrefix::ANY),
            cgroup_level: self.cgroup.map_or(0, |c| c.level),
            _pad1: 0,
            cgroup_id: self.cgroup.map_or(0, |c| c.id),
        }
    }

    /// Whether an event passes the `--state` list (see `StateMask::shows`).
    pub fn shows_states(&self, event: &Event) -> bool {
        self.state.is_none_or(|mask| mask.shows(event))
    }

    /// Whether an event is listed (printed, counted in the summary): a
    /// lifecycle event only with --state (--metrics has them traced for its
    /// counters alone).
    pub fn lists(&self, event: &Event) -> bool {
        self.state.is_some() || !event.is_lifecycle()
    }

    /// Whether events need their sockets' containers and pods: for JSON,
    /// the POD column (unless a quiet exporter prints neither), and metrics
    /// labelled by them.
    pub fn identifies(&self) -> bool {
        (self.json || self.pod) && !self.quiet_exporter()
            || self
                .metrics_by
                .as_ref()
                .is_some_and(Dimensions::need_identity)
    }

    /// `-q --metrics`: the metrics are the only output.
    pub fn quiet_exporter(&self) -> bool {
        self.quiet && self.metrics.is_some()
    }

    /// A quiet exporter without connection labels or owner filters: no
    /// transition's connection is needed, so the kernel counts transitions
    /// and sends only those that tell more (`tcpretrans_common::tells_more`).
    pub fn kernel_counts_transitions(&self) -> bool {
        self.quiet_exporter()
            && self.metrics_by.as_ref().is_none_or(Dimensions::is_empty)
            && !self.filters_owners()
    }

    /// Whether events need their sockets' owners: for output, `-p`/`--comm`,
    /// and metrics labelled by them.
    pub fn names_owners(&self) -> bool {
        !self.quiet_exporter()
            || self.filters_owners()
            || self.metrics_by.as_ref().is_some_and(Dimensions::need_owner)
    }

    fn filters_owners(&self) -> bool {
        self.pid.is_some() || self.comm.is_some()
    }

    /// Whether an event's owner passes `-p`/`--comm`. The kernel side
    /// already applied `-p` where it knew the owner; owners found in /proc
    /// are checked here. An unknown owner cannot be shown to match.
    pub fn keeps_owner(&self, owner: Option<&Process>) -> bool {
        if !self.filters_owners() {
            return true;
        }
        owner.is_some_and(|o| {
            self.pid.is_none_or(|pid| pid == o.pid)
                && self.comm.as_ref().is_none_or(|c| *c == o.comm)
        })
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
fn parse_prefix(s: &str) -> Result<AddrPrefix, String> {
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let (bytes, max, offset) = match addr {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 32, 96),
        IpAddr::V6(v6) => (v6.octets(), 128, 0),
    };
    let len: u16 = match len {
        None => max,
        Some(len) => len
            .parse()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("`/{len}` is not a prefix length from 0 to {max}"))?,
    };
    Ok(AddrPrefix {
        addr: bytes,
        bits: if len == 0 { 0 } else { offset + len },
        _pad: 0,
    })
}

/// `4096`, `64K`, `4M`, `1G`: a power of two from one page to 1 GiB.
fn parse_ring_size(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("`{s}` is not a size (e.g. 4096, 64K, 4M)")),
    };
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_shl(shift).filter(|b| b >> shift == n))
        .filter(|b| b.is_power_of_two() && *b >= page && *b <= 1 << 30)
        .map(|b| b as u32)
        .ok_or_else(|| format!("`{s}` must be a power of two from {page} bytes to 1G"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `fin_wait1,TIME_WAIT,fin_wait` → state bit mask; `all` → every state.
pub fn parse_state_list(list: &str) -> Result<StateMask, String> {
    if list.eq_ignore_ascii_case("all") {
        return Ok(StateMask(0));
    }
    let mut mask = 0u16;
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!("empty state name in `{list}`"));
        }
        let upper = name.to_ascii_uppercase();
        let upper = upper.strip_prefix("TCP_").unwrap_or(&upper);
        if upper == "FIN_WAIT" {
            mask |= 1 << tcp_state::FIN_WAIT1 | 1 << tcp_state::FIN_WAIT2;
            continue;
        }
        let state = TcpState::from_name(upper).ok_or_else(|| {
            format!(
                "unknown TCP state `{name}` (known: {}, fin_wait)",
                TcpState::ALL
                    .iter()
                    .map(|s| s.name().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        mask |= 1 << state as u8;
    }
    Ok(StateMask(mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tcpretrans").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn ring_sizes_are_powers_of_two_with_units() {
        assert_eq!(parse(&[]).unwrap().ring_size, 4 << 20);
        assert_eq!(parse_ring_size("64K"), Ok(64 << 10));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("1g"), Ok(1 << 30));
        for bad in ["3M", "2G", "1K", "", "M", "4X", "99999999999999999999K"] {
            assert!(parse_ring_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_map_size_has_a_default_and_bounds() {
        assert_eq!(parse(&[]).unwrap().max_sockets, 65_536);
        assert_eq!(
            parse(&["--max-sockets", "262144"]).unwrap().max_sockets,
            262_144
        );
        assert!(parse(&["--max-sockets", "10"]).is_err());
    }

    #[test]
    fn count_options_need_count_and_exclude_state() {
        assert!(parse(&["-c", "-i", "5", "--top", "10"]).is_ok());
        assert!(parse(&["-i", "5"]).is_err());
        assert!(parse(&["--top", "3"]).is_err());
        assert!(parse(&["-c", "--state"]).is_err());
    }

    #[test]
    fn state_list_is_case_insensitive_and_fin_wait_means_both() {
        let mask = parse_state_list("fin_wait,TIME_WAIT").unwrap();
        assert_eq!(mask, StateMask(1 << 4 | 1 << 5 | 1 << 6));
        assert_eq!(parse_state_list("Fin_Wait1").unwrap(), StateMask(1 << 4));
        assert_eq!(
            parse_state_list("tcp_close_wait").unwrap(),
            StateMask(1 << 8)
        );
        assert_eq!(parse_state_list("ALL").unwrap(), StateMask(0));
    }

    #[test]
    fn unknown_state_names_are_rejected_with_the_known_ones() {
        let err = parse_state_list("fin_wait3").unwrap_err();
        assert!(err.starts_with("unknown TCP state `fin_wait3`"), "{err}");
        assert!(err.contains("time_wait"));
        assert!(parse_state_list("established,,close").is_err());
        assert!(parse(&["--state=bogus"]).is_err());
        assert!(parse(&["--state="]).is_err());
    }

    #[test]
    fn a_state_list_may_follow_a_space() {
        let sel = parse(&["--state", "time_wait", "--json"]).unwrap();
        assert_eq!(sel.state, Some(StateMask(1 << 6)));
        let bare = parse(&["--state", "-4"]).unwrap();
        assert_eq!((bare.state, bare.ipv4), (Some(StateMask(0)), true));
        assert!(parse(&["--state", "bogus"]).is_err());
    }

    #[test]
    fn a_state_list_shows_what_enters_or_leaves_its_states() {
        use crate::fixtures::{loopback_socket, transition};
        let time_wait = parse_state_list("time_wait").unwrap();
        let entry = |close| {
            let mut event = transition(TcpState::FinWait2, TcpState::TimeWait, 1, 0);
            if let Event::State(change) = &mut event {
                change.close = Some(close);
            }
            event
        };
        assert!(time_wait.shows(&entry(Close::TimeWait)));
        let mut overflow = transition(TcpState::FinWait2, TcpState::Close, 1, 0);
        if let Event::State(change) = &mut overflow {
            change.close = Some(Close::TimeWaitOverflow);
        }
        assert!(time_wait.shows(&overflow));
        assert!(!parse_state_list("close_wait").unwrap().shows(&overflow));
        assert!(parse_state_list("close").unwrap().shows(&overflow));
        let reuse = Event::TimeWaitReuse {
            socket: Box::new(loopback_socket(1, 0)),
            time_wait: Duration::from_secs(1),
        };
        assert!(time_wait.shows(&reuse));
        assert!(!parse_state_list("established").unwrap().shows(&reuse));
        // Kept from the kernel side for reuse detection, not shown.
        assert!(!time_wait.shows(&transition(TcpState::SynSent, TcpState::Established, 1, 0)));
        // The transition the tool shows as a TIME_WAIT entry is not a CLOSE.
        assert!(
            !parse_state_list("close")
                .unwrap()
                .shows(&entry(Close::TimeWait))
        );
        assert!(
            parse_state_list("fin_wait")
                .unwrap()
                .shows(&entry(Close::TimeWait))
        );
        let reset = Event::Reset {
            socket: Box::new(loopback_socket(1, 0)),
            direction: crate::events::ResetDirection::Received,
            state: Some(TcpState::Established),
        };
        assert!(parse_state_list("established").unwrap().shows(&reset));
        assert!(!time_wait.shows(&reset));
    }

    #[test]
    fn state_flag_without_list_selects_all() {
        let sel = parse(&["--state"]).unwrap().filter();
        assert!(sel.flags & filter_flags::STATE_EVENTS != 0);
        assert_eq!(sel.state_mask, 0);
        let sel = parse(&[]).unwrap().filter();
        assert!(!sel.flags & filter_flags::STATE_EVENTS != 0);
        let sel = parse(&["--state=fin_wait1"]).unwrap().filter();
        assert_eq!(sel.state_mask, 1 << 4);
    }

    #[test]
    fn owners_are_named_only_where_something_uses_them() {
        let names = |args: &[&str]| parse(args).unwrap().names_owners();
        assert!(names(&[]));
        assert!(names(&["--metrics", "9100"]), "events are printed too");
        assert!(!names(&["-q", "--metrics", "9100"]));
        assert!(!names(&[
            "-q",
            "--metrics",
            "9100",
            "--metrics-by",
            "rport"
        ]));
        assert!(names(&["-q", "--metrics", "9100", "--metrics-by", "comm"]));
        assert!(names(&["-q", "--metrics", "9100", "--comm", "nginx"]));
    }

    #[test]
    fn only_a_quiet_exporter_without_labels_counts_transitions_in_the_kernel() {
        let counts = |args: &[&str]| {
            parse(args).unwrap().filter().flags & filter_flags::COUNT_TRANSITIONS != 0
        };
        assert!(counts(&["-q", "--metrics", "9100"]));
        assert!(!counts(&["--metrics", "9100"]), "events are printed too");
        assert!(!counts(&[
            "-q",
            "--metrics",
            "9100",
            "--metrics-by",
            "rport"
        ]));
        assert!(!counts(&["-q", "--state"]));
        // The kernel counts before it knows a transition's owner.
        assert!(!counts(&["-q", "--metrics", "9100", "-p", "1"]));
        assert!(!counts(&["-q", "--metrics", "9100", "--comm", "nginx"]));
        // Nor does it read cgroups for output it does not print.
        let cgroups =
            |args: &[&str]| parse(args).unwrap().filter().flags & filter_flags::CGROUP_IDS;
        assert_eq!(cgroups(&["--json", "-q", "--metrics", "9100"]), 0);
        assert_ne!(cgroups(&["--json", "-q"]), 0);
        assert_ne!(
            cgroups(&["-q", "--metrics", "9100", "--metrics-by", "pod"]),
            0
        );
    }

    #[test]
    fn colors_follow_the_terminal_and_no_color_unless_told() {
        let set = Some(OsStr::new("1"));
        assert!(ColorWhen::Auto.enabled(true, None));
        assert!(ColorWhen::Auto.enabled(true, Some(OsStr::new(""))));
        assert!(!ColorWhen::Auto.enabled(true, set));
        assert!(!ColorWhen::Auto.enabled(false, None));
        assert!(ColorWhen::Always.enabled(false, set));
        assert!(!ColorWhen::Never.enabled(true, None));
        assert_eq!(parse(&[]).unwrap().color, ColorWhen::Auto);
        assert!(parse(&["--color", "sometimes"]).is_err());
        // Never in JSON, whatever was asked.
        assert!(!parse(&["--json", "--color=always"]).unwrap().style().color);
        assert!(parse(&["--color=always"]).unwrap().style().color);
    }

    #[test]
    fn families_and_their_conflict() {
        assert_eq!(parse(&["-4"]).unwrap().filter().family, AF_INET);
        assert_eq!(parse(&["-6"]).unwrap().filter().family, AF_INET6);
        assert!(parse(&["-4", "-6"]).is_err());
    }

    #[test]
    fn address_prefixes() {
        let v4 = parse_prefix("10.1.0.0/16").unwrap();
        assert_eq!(
            (v4.bits, &v4.addr[10..]),
            (112, &[0xff, 0xff, 10, 1, 0, 0][..])
        );
        assert_eq!(parse_prefix("127.0.0.1").unwrap().bits, 128);
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().bits, 32);
        assert_eq!(parse_prefix("[::1]").unwrap().bits, 128);
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap().bits, 0);
        assert!(
            parse_prefix("10.0.0.0/33")
                .unwrap_err()
                .contains("prefix length from 0 to 32")
        );
        assert!(parse_prefix("::/129").is_err());
        assert!(
            parse_prefix("10.0.0.300")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(parse_prefix("10.0.0.0/x").is_err());
    }

    #[test]
    fn filters_reach_the_kernel_side() {
        let f = parse(&[
            "-P",
            "443",
            "--lport",
            "40000",
            "--rport",
            "80",
            "-p",
            "42",
            "--raddr",
            "10.0.0.0/8",
        ])
        .unwrap()
        .filter();
        assert_eq!(
            (f.port, f.lport, f.rport, f.pid, f.raddr.bits),
            (443, 40000, 80, 42, 104)
        );
        assert_eq!(f.laddr, AddrPrefix::ANY);
        assert!(parse(&["-P", "0"]).is_err());
        assert!(parse(&["-P", "65536"]).is_err());
        assert!(parse(&["-p", "0"]).is_err());
        assert!(parse(&["-p", "-5"]).is_err());
        assert!(parse(&["--laddr", "nowhere"]).is_err());
    }

    #[test]
    fn owners_only_match_when_known() {
        let args = parse(&["-p", "42", "--comm", "nginx"]).unwrap();
        let nginx = Process {
            pid: 42,
            uid: 0,
            comm: "nginx".into(),
        };
        assert!(args.keeps_owner(Some(&nginx)));
        assert!(!args.keeps_owner(Some(&Process {
            comm: "curl".into(),
            ..nginx.clone()
        })));
        assert!(!args.keeps_owner(None));
        assert!(parse(&[]).unwrap().keeps_owner(None));
    }

    #[test]
    fn bad_numbers_are_rejected() {
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--duration", "-3"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
        assert_eq!(
            parse(&["--duration", "1.5"]).unwrap().duration,
            Some(Duration::from_millis(1500))
        );
        assert!(parse(&["--netns", "0"]).is_err());
        assert!(parse(&["--netns", "-1"]).is_err());
        assert!(parse(&["--netns", "4294967296"]).is_err());
        // Our own namespace exists, by path and by number.
        let own = parse(&["--netns", "/proc/self/ns/net"]).unwrap().netns;
        assert!(own.is_some());
        let own = own.unwrap().to_string();
        assert_eq!(parse(&["--netns", &own]).unwrap().netns, own.parse().ok());
        assert!(
            parse(&["--netns", "1"]).is_err(),
            "no namespace has inode 1"
        );
        assert!(parse(&["--netns", "no-such-namespace"]).is_err());
    }
}
