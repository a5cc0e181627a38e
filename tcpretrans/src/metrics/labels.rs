//! What the per-connection metrics are labelled by (`--metrics-by`), and the
//! cap on their series (`--max-series`): past it, an event's connection
//! labels are folded into one `other` set, and counted.
use std::{hash::Hash, net::IpAddr};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::events::Socket;

/// A connection's labels: `(name, value)` in `--metrics-by` order.
pub type Connection = Vec<(&'static str, String)>;

/// One property of a connection that metrics can be labelled by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// The owning process's name.
    Comm,
    /// The network namespace's inode (one per container or pod).
    Netns,
    Lport,
    Rport,
    /// The remote address, cut to these prefix lengths: a subnet per series
    /// rather than a host.
    Raddr {
        v4: u8,
        v6: u8,
    },
    /// The socket's container (its runtime's id), pod and the pod's
    /// Kubernetes namespace, from its cgroup (`identity`).
    Container,
    Pod,
    Namespace,
}

impl Dimension {
    /// The value of a label that is not known for this event.
    const UNKNOWN: &str = "";

    fn name(self) -> &'static str {
        match self {
            Self::Comm => "comm",
            Self::Netns => "netns",
            Self::Lport => "lport",
            Self::Rport => "rport",
            Self::Raddr { .. } => "raddr",
            Self::Container => "container",
            Self::Pod => "pod",
            Self::Namespace => "namespace",
        }
    }

    fn value(self, socket: &Socket) -> String {
        match self {
            Self::Comm => socket
                .owner
                .as_ref()
                .map_or_else(|| Self::UNKNOWN.into(), |o| o.comm.to_string()),
            Self::Netns => socket
                .netns
                .map_or_else(|| Self::UNKNOWN.into(), |n| n.to_string()),
            Self::Container | Self::Pod | Self::Namespace => {
                let identity = socket.identity.as_deref();
                let value = identity.and_then(|i| match self {
                    Self::Container => i.container_id.as_deref(),
                    Self::Pod => i.pod.as_deref(),
                    _ => i.pod_namespace.as_deref(),
                });
                value.unwrap_or(Self::UNKNOWN).to_owned()
            }
            Self::Lport => socket.lport.to_string(),
            Self::Rport => socket.rport.to_string(),
            Self::Raddr { v4, v6 } => match socket.raddr {
                IpAddr::V4(a) if v4 == 32 => a.to_string(),
                IpAddr::V4(a) => {
                    let network =
                        a.to_bits() & u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
                    format!("{}/{v4}", std::net::Ipv4Addr::from_bits(network))
                }
                IpAddr::V6(a) if v6 == 128 => a.to_string(),
                IpAddr::V6(a) => {
                    let network =
                        a.to_bits() & u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
                    format!("{}/{v6}", std::net::Ipv6Addr::from_bits(network))
                }
            },
        }
    }
}

/// The `--metrics-by` list, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dimensions(Vec<Dimension>);

impl Dimensions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a label needs the sockets' containers and pods.
    pub fn need_identity(&self) -> bool {
        self.0.iter().any(|d| {
            matches!(
                d,
                Dimension::Container | Dimension::Pod | Dimension::Namespace
            )
        })
    }

    /// Whether a label names the socket's owner.
    pub fn need_owner(&self) -> bool {
        self.0.contains(&Dimension::Comm)
    }

    /// The labels of an event about `socket` (none for events of no socket).
    fn of(&self, socket: Option<&Socket>) -> Connection {
        self.0
            .iter()
            .map(|&d| (d.name(), socket.map_or_else(String::new, |s| d.value(s))))
            .collect()
    }

    /// The set every folded event gets.
    fn other(&self) -> Connection {
        self.0.iter().map(|&d| (d.name(), "other".into())).collect()
    }
}

/// Parses `--metrics-by`: `container,pod,namespace,comm,netns,lport,rport,raddr[/V4PREFIX[/V6PREFIX]]`.
/// A bare `raddr` is the address itself; `raddr/24` cuts IPv4 addresses to
/// /24 and IPv6 ones to /64 (a subnet), `raddr/24/48` says both.
pub fn parse_dimensions(list: &str) -> Result<Dimensions, String> {
    let mut dimensions: Vec<Dimension> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (name, prefixes) = item.split_once('/').unwrap_or((item, ""));
        let dimension = match name.to_ascii_lowercase().as_str() {
            "comm" => Dimension::Comm,
            "netns" => Dimension::Netns,
            "lport" => Dimension::Lport,
            "rport" => Dimension::Rport,
            "raddr" => parse_raddr(prefixes)?,
            "container" => Dimension::Container,
            "pod" => Dimension::Pod,
            "namespace" => Dimension::Namespace,
            _ => {
                return Err(format!(
                    "{item:?} is not a label: choose among container, pod, namespace, comm, netns, lport, rport, raddr[/PREFIX]"
                ));
            }
        };
        if !prefixes.is_empty() && !matches!(dimension, Dimension::Raddr { .. }) {
            return Err(format!("{item:?}: only raddr takes a prefix length"));
        }
        if dimensions.iter().any(|d| d.name() == dimension.name()) {
            return Err(format!("{name} is given twice"));
        }
        dimensions.push(dimension);
    }
    Ok(Dimensions(dimensions))
}

fn parse_raddr(prefixes: &str) -> Result<Dimension, String> {
    let length = |text: &str, max: u8| {
        text.parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("raddr/{prefixes}: {text:?} is not a prefix length of 0-{max}"))
    };
    Ok(match prefixes.split_once('/') {
        _ if prefixes.is_empty() => Dimension::Raddr { v4: 32, v6: 128 },
        None => Dimension::Raddr {
            v4: length(prefixes, 32)?,
            v6: 64,
        },
        Some((v4, v6)) => Dimension::Raddr {
            v4: length(v4, 32)?,
            v6: length(v6, 128)?,
        },
    })
}

/// Hands out the connection labels of each event within the series cap.
pub struct Series {
    dimensions: Dimensions,
    other: Connection,
    /// Series made with connection labels, against `max`.
    made: i64,
    max: i64,
    made_gauge: Gauge,
    /// Events counted under `other` because the cap was reached.
    folded: Counter,
}

impl Series {
    pub fn new(dimensions: Dimensions, max: u32, made_gauge: Gauge, folded: Counter) -> Self {
        Self {
            other: dimensions.other(),
            dimensions,
            made: 0,
            max: i64::from(max),
            made_gauge,
            folded,
        }
    }

    /// The connection labels of an event about `socket`.
    pub fn labels(&self, socket: Option<&Socket>) -> Connection {
        self.dimensions.of(socket)
    }

    /// The counter of `fixed` and `connection` in `family`: a new series
    /// while under the cap, else the `other` one. Without connection
    /// labels there is a bounded number of series and no cap.
    pub fn counter<F>(
        &mut self,
        family: &Family<(F, Connection), Counter>,
        fixed: F,
        connection: &Connection,
    ) -> Counter
    where
        F: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug,
    {
        let mut key = (fixed, connection.clone());
        if !self.dimensions.is_empty() && family.get(&key).is_none() {
            if self.made >= self.max {
                self.folded.inc();
                key.1.clone_from(&self.other);
            } else {
                self.made += 1;
                self.made_gauge.set(self.made);
            }
        }
        family.get_or_create_owned(&key)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::fixtures;

    fn socket(raddr: IpAddr) -> Socket {
        Socket {
            raddr,
            ..fixtures::loopback_socket(1, 0)
        }
    }

    #[test]
    fn parses_the_label_list() {
        let d = parse_dimensions("comm, raddr/24,rport").unwrap();
        assert_eq!(
            d.0,
            [
                Dimension::Comm,
                Dimension::Raddr { v4: 24, v6: 64 },
                Dimension::Rport
            ]
        );
        assert_eq!(
            parse_dimensions("raddr/16/48").unwrap().0,
            [Dimension::Raddr { v4: 16, v6: 48 }]
        );
        assert_eq!(
            parse_dimensions("raddr").unwrap().0,
            [Dimension::Raddr { v4: 32, v6: 128 }]
        );
        assert_eq!(
            parse_dimensions("namespace,pod,container").unwrap().0,
            [Dimension::Namespace, Dimension::Pod, Dimension::Container]
        );
        for bad in [
            "pod2",
            "raddr/33",
            "raddr/24/129",
            "comm,comm",
            "rport/8",
            "",
        ] {
            assert!(parse_dimensions(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_addresses_are_cut_to_their_prefix() {
        let by = parse_dimensions("raddr/24").unwrap();
        let v4 = socket(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(by.of(Some(&v4)), [("raddr", "10.1.2.0/24".to_string())]);
        let v6 = socket(IpAddr::V6("2001:db8:1:2:3::9".parse::<Ipv6Addr>().unwrap()));
        assert_eq!(
            by.of(Some(&v6)),
            [("raddr", "2001:db8:1:2::/64".to_string())]
        );
        let whole = parse_dimensions("raddr/0").unwrap();
        assert_eq!(whole.of(Some(&v4)), [("raddr", "0.0.0.0/0".to_string())]);
        assert_eq!(by.of(None), [("raddr", String::new())]);
    }

    #[test]
    fn past_the_cap_events_fold_into_other() {
        let family: Family<(crate::metrics::Fixed<1>, Connection), Counter> = Family::default();
        let (made, folded) = (Gauge::default(), Counter::default());
        let mut series = Series::new(
            parse_dimensions("rport").unwrap(),
            2,
            made.clone(),
            folded.clone(),
        );
        for rport in [1, 2, 3, 4, 1] {
            let connection = series.labels(Some(&Socket {
                rport,
                ..fixtures::loopback_socket(1, 0)
            }));
            series
                .counter(&family, [("type", "RTO")], &connection)
                .inc();
        }
        let count = |rport: &str| {
            family
                .get(&([("type", "RTO")], vec![("rport", rport.to_string())]))
                .map(|c| c.get())
        };
        assert_eq!(
            [count("1"), count("2"), count("3"), count("other")],
            [Some(2), Some(1), None, Some(2)]
        );
        assert_eq!((made.get(), folded.get()), (2, 2));
    }
}
