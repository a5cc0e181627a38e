//! Command line.
use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Parser};
use tcpretrans_common::{AF_INET, AF_INET6, tcp_state};

use crate::{decode::TcpState, output::Style};

const EXAMPLES: &str = "\
Examples:
  tcpretrans                         # every TCP retransmission on the host
  tcpretrans --state                 # ... and every TCP state transition
  tcpretrans --state=fin_wait,time_wait   # only transitions into/out of these
  tcpretrans --json --netns 4026532289    # JSON Lines for one network namespace
  tcpretrans -4 --duration 60        # IPv4 only, stop after a minute
  tcpretrans -s                      # with sequence numbers and segment counts
  tcpretrans --check                 # what this kernel offers; exit 0 if it can trace";

/// Trace TCP retransmissions and state changes, live, with eBPF.
#[derive(Debug, Parser)]
#[command(name = "tcpretrans", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Also show TCP state transitions; LIST (comma separated, e.g.
    /// `fin_wait1,time_wait`; `fin_wait` means both FIN_WAIT states) keeps
    /// only transitions entering or leaving those states.
    #[arg(
        long,
        value_name = "LIST",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "all",
        value_parser = parse_state_list
    )]
    pub state: Option<StateMask>,

    /// Print JSON Lines: one object per event.
    #[arg(long)]
    pub json: bool,

    /// Only sockets in the network namespace with this inode number
    /// (as in `ls -Li /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE", value_parser = clap::value_parser!(u32).range(1..))]
    pub netns: Option<u32>,

    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6", action = ArgAction::SetTrue)]
    pub ipv4: bool,

    /// IPv6 only.
    #[arg(short = '6', long = "ipv6", action = ArgAction::SetTrue)]
    pub ipv6: bool,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Add the SEQ and SEGS columns (sequence number and segment count of
    /// each retransmitted skb).
    #[arg(short = 's', long)]
    pub sequence: bool,

    /// Read kernel type information from FILE instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,

    /// Print what this kernel offers the tool (tracepoints, BTF members, HZ,
    /// privileges, TCP sysctls) and exit: 0 when it can trace here.
    #[arg(long)]
    pub check: bool,
}

/// What the kernel side is asked to keep, derived from the arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// `AF_INET`, `AF_INET6` or 0 for both.
    pub family: u16,
    pub netns: u32,
    /// Report state transitions.
    pub state_events: bool,
    /// Bit `1 << state` per state of interest; 0 for all.
    pub state_mask: u16,
}

/// Bit `1 << state` per selected TCP state; 0 selects all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(pub u16);

impl Args {
    pub fn style(&self) -> Style {
        Style {
            json: self.json,
            sequence: self.sequence,
            wide_endpoints: self.ipv6,
        }
    }

    pub fn selection(&self) -> Selection {
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => AF_INET,
            (_, true) => AF_INET6,
            _ => 0,
        };
        Selection {
            family,
            netns: self.netns.unwrap_or(0),
            state_events: self.state.is_some(),
            state_mask: self.state.map_or(0, |m| m.0),
        }
    }
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
    fn state_flag_without_list_selects_all() {
        let sel = parse(&["--state"]).unwrap().selection();
        assert!(sel.state_events);
        assert_eq!(sel.state_mask, 0);
        let sel = parse(&[]).unwrap().selection();
        assert!(!sel.state_events);
        let sel = parse(&["--state=fin_wait1"]).unwrap().selection();
        assert_eq!(sel.state_mask, 1 << 4);
    }

    #[test]
    fn families_and_their_conflict() {
        assert_eq!(parse(&["-4"]).unwrap().selection().family, AF_INET);
        assert_eq!(parse(&["-6"]).unwrap().selection().family, AF_INET6);
        assert!(parse(&["-4", "-6"]).is_err());
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
        assert!(parse(&["--netns", "4026531840"]).is_ok());
    }
}
