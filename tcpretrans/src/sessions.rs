//! Per-connection accounting. A connection is its 4-tuple in its network
//! namespace: the request socket that retransmits a SYN-ACK and the socket
//! accepted from it are one connection, and a socket address the kernel
//! reuses is not. A `connect()` reaches SYN_SENT before it has a port, so
//! its start is remembered by socket address until the port is known.
//!
//! With `--state` a connection's account ends with it, in a `session_end`
//! event; with `-c` the accounts are the flow table, taken at each interval.
use std::cmp::Reverse;

use foldhash::HashMap;

use jiff::Timestamp;

use crate::events::{Account, Event, FourTuple, SessionEnd, Socket, StateChange, TcpState};

/// A connection seen by the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The socket of its latest event (its owner may have become known).
    pub socket: Socket,
    /// When it began, if the tool saw it begin.
    pub opened: Option<Timestamp>,
    pub account: Account,
}

impl Session {
    /// Takes what a later event of the connection tells: its time, the
    /// socket it came from, and the owner once known (a later event may
    /// not know it). The 4-tuple, and so the addresses, are the same.
    fn refresh(&mut self, latest: &Socket) {
        let kept = &mut self.socket;
        kept.time = latest.time;
        kept.skaddr = latest.skaddr;
        kept.inode = latest.inode;
        if latest.owner.is_some() && kept.owner != latest.owner {
            kept.owner.clone_from(&latest.owner);
        }
    }
}

/// Live connections, bounded in number: when full, those quiet for the
/// longest are forgotten.
#[derive(Debug)]
pub struct Sessions {
    live: HashMap<FourTuple, Session>,
    /// When each `connect()` still without a port began, by socket address.
    connecting: HashMap<u64, Timestamp>,
    capacity: usize,
}

impl Sessions {
    pub fn new(capacity: usize) -> Self {
        Self {
            live: HashMap::default(),
            connecting: HashMap::default(),
            capacity,
        }
    }

    /// Accounts for an event; returns a `SessionEnd` event when it ended a
    /// connection.
    pub fn observe(&mut self, event: &Event) -> Option<Event> {
        match event {
            Event::Retransmit(r) => {
                let begins = matches!(r.state, Some(TcpState::SynSent | TcpState::SynRecv));
                let session = self.session(&r.socket, begins);
                session.account.record(r);
                session.refresh(&r.socket);
                None
            }
            Event::State(change) if !is_listener(change) => {
                let socket = &change.socket;
                let begins = matches!(change.old_state, Some(TcpState::Close | TcpState::Listen));
                // Not a 4-tuple yet: a `connect()` gets its port after
                // SYN_SENT, and older kernels (5.10 to 6.12) report a socket made
                // from a listener in SYN_RECV before its remote end is set.
                let unbound = socket.lport == 0 || socket.rport == 0;
                if ends(change) {
                    let connect = self.connecting.remove(&socket.skaddr);
                    let session = (!unbound)
                        .then(|| self.live.remove(&socket.four_tuple()))
                        .flatten();
                    // The kernel side's record of the start counts too: a
                    // state filter may have kept the start from us.
                    let (opened, account) = match session {
                        Some(s) => (earliest([connect, s.opened, change.opened]), s.account),
                        None => (
                            earliest([connect, begins.then_some(socket.time), change.opened]),
                            Account::default(),
                        ),
                    };
                    return Some(Event::SessionEnd(Box::new(SessionEnd {
                        change: (**change).clone(),
                        opened,
                        account,
                    })));
                }
                if unbound {
                    if begins {
                        if self.connecting.len() >= self.capacity {
                            // Connects stay here for a round trip at most;
                            // this many means their ends went unseen.
                            self.connecting.clear();
                        }
                        self.connecting.insert(socket.skaddr, socket.time);
                    }
                    return None;
                }
                let session = self.session(socket, begins);
                session.refresh(socket);
                None
            }
            _ => None,
        }
    }

    /// The connections with their accounts, most retransmits first, and
    /// forgets them: the flow table of one `-c` interval.
    pub fn take(&mut self) -> Vec<Session> {
        let mut sessions: Vec<Session> = self.live.drain().map(|(_, s)| s).collect();
        sessions.sort_by_key(|s| {
            (
                Reverse(s.account.retransmits()),
                Reverse(s.account.segments),
                s.socket.four_tuple(),
            )
        });
        sessions
    }

    fn session(&mut self, socket: &Socket, begins: bool) -> &mut Session {
        let connect = self.connecting.remove(&socket.skaddr);
        let tuple = socket.four_tuple();
        if self.live.len() >= self.capacity && !self.live.contains_key(&tuple) {
            self.forget_quietest();
        }
        let session = self.live.entry(tuple).or_insert_with(|| Session {
            socket: socket.clone(),
            opened: begins.then_some(socket.time),
            account: Account::default(),
        });
        if connect.is_some() {
            session.opened = connect;
        }
        session
    }

    /// Forgets the quietest sixteenth of the table at once: a scan per
    /// connection made a full table cost 0.5 ms for each new one.
    fn forget_quietest(&mut self) {
        let mut times: Vec<Timestamp> = self.live.values().map(|s| s.socket.time).collect();
        let count = (self.capacity / 16).max(1).min(times.len());
        let Some(last) = count.checked_sub(1) else {
            return;
        };
        let (_, &mut latest_forgotten, _) = times.select_nth_unstable(last);
        let mut left = count;
        self.live.retain(|_, session| {
            let forget = left > 0 && session.socket.time <= latest_forgotten;
            left -= usize::from(forget);
            !forget
        });
    }
}

fn earliest<const N: usize>(times: [Option<Timestamp>; N]) -> Option<Timestamp> {
    times.into_iter().flatten().min()
}

/// A listening socket's transitions are not a connection's.
fn is_listener(change: &StateChange) -> bool {
    change.old_state == Some(TcpState::Listen) && change.new_state == Some(TcpState::Close)
        || change.new_state == Some(TcpState::Listen)
}

/// Whether the full socket is done: closed, or handed to a timewait socket.
fn ends(change: &StateChange) -> bool {
    change.close.is_some() || change.new_state == Some(TcpState::Close)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use super::*;
    use crate::{
        events::{Cause, Retransmit},
        fixtures::{loopback_socket as socket, sample_retransmit, transition as state},
    };

    fn retransmit(cause: Cause, rto_ms: u64, segs: u16, lport: u16, at_ms: i64) -> Event {
        Event::Retransmit(Box::new(Retransmit {
            cause: Some(cause),
            rto: Some(Duration::from_millis(rto_ms)),
            segs: Some(segs),
            ..sample_retransmit(socket(lport, at_ms))
        }))
    }

    #[test]
    fn a_connection_ends_with_its_account() {
        let mut sessions = Sessions::new(16);
        let events = [
            state(TcpState::Close, TcpState::SynSent, 40000, 0),
            state(TcpState::SynSent, TcpState::Established, 40000, 1),
            retransmit(Cause::Rto, 200, 1, 40000, 300),
            retransmit(Cause::Rto, 400, 2, 40000, 700),
            retransmit(Cause::Tlp, 200, 1, 40001, 710),
        ];
        for event in &events {
            assert_eq!(sessions.observe(event), None);
        }
        let Some(Event::SessionEnd(end)) =
            sessions.observe(&state(TcpState::Established, TcpState::Close, 40000, 1000))
        else {
            panic!("no session_end")
        };
        assert_eq!(
            end.opened,
            Some(Timestamp::from_millisecond(1_800_000_000_000).unwrap())
        );
        assert_eq!(end.account.retransmits(), 2);
        assert_eq!(end.account.segments, 3);
        assert_eq!(end.account.max_rto, Some(Duration::from_millis(400)));
        assert_eq!(end.account.causes().collect::<Vec<_>>(), [("RTO", 2)]);
        assert_eq!(sessions.live.len(), 1, "port 40001 lives on");
    }

    #[test]
    fn a_flow_keeps_its_owner_once_known_and_its_latest_time() {
        let mut sessions = Sessions::new(16);
        let mut owned = retransmit(Cause::Rto, 200, 1, 40000, 100);
        if let Event::Retransmit(r) = &mut owned {
            r.socket.owner = Some(crate::events::Process {
                pid: 42,
                uid: 0,
                comm: "curl".into(),
            });
        }
        sessions.observe(&owned);
        sessions.observe(&retransmit(Cause::Rto, 400, 1, 40000, 500));
        let flows = sessions.take();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].socket.owner.as_ref().map(|o| o.pid), Some(42));
        assert_eq!(flows[0].socket.time, socket(40000, 500).time);
    }

    #[test]
    fn a_connect_is_one_session_although_its_port_comes_later() {
        let mut sessions = Sessions::new(16);
        let mut connect = state(TcpState::Close, TcpState::SynSent, 40000, 0);
        if let Event::State(change) = &mut connect {
            change.socket.lport = 0;
        }
        sessions.observe(&connect);
        sessions.observe(&retransmit(Cause::Syn, 1000, 1, 40000, 1000));
        let Some(Event::SessionEnd(end)) =
            sessions.observe(&state(TcpState::SynSent, TcpState::Close, 40000, 3000))
        else {
            panic!("no session_end")
        };
        assert!(end.opened.is_some());
        assert_eq!(end.account.causes().collect::<Vec<_>>(), [("SYN", 1)]);
    }

    #[test]
    fn an_accepted_connection_inherits_its_syn_ack_retransmits() {
        let mut sessions = Sessions::new(16);
        let mut synack = retransmit(Cause::SynAck, 1000, 1, 80, 0);
        if let Event::Retransmit(r) = &mut synack {
            r.socket.skaddr = 0xaaaa; // the request socket
            r.state = Some(TcpState::SynRecv);
        }
        sessions.observe(&synack);
        sessions.observe(&state(TcpState::Listen, TcpState::SynRecv, 80, 1000));
        let Some(Event::SessionEnd(end)) =
            sessions.observe(&state(TcpState::SynRecv, TcpState::Close, 80, 2000))
        else {
            panic!("no session_end")
        };
        assert_eq!(
            end.opened,
            Some(Timestamp::from_millisecond(1_800_000_000_000).unwrap())
        );
        assert_eq!(end.account.causes().collect::<Vec<_>>(), [("SYNACK", 1)]);
        assert!(sessions.live.is_empty());
    }

    #[test]
    fn a_socket_made_from_a_listener_before_its_remote_end_is_set_is_one_session() {
        // Older kernels' `inet_csk_clone_lock()` reports LISTEN -> SYN_RECV while
        // the new socket still has its listener's (unset) remote end.
        let mut sessions = Sessions::new(16);
        let mut created = state(TcpState::Listen, TcpState::SynRecv, 80, 0);
        if let Event::State(change) = &mut created {
            change.socket.rport = 0;
            change.socket.raddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        }
        assert_eq!(sessions.observe(&created), None);
        assert!(sessions.live.is_empty(), "no session under a half 4-tuple");
        sessions.observe(&state(TcpState::SynRecv, TcpState::Established, 80, 1));
        sessions.observe(&retransmit(Cause::Fast, 200, 1, 80, 2));
        let Some(Event::SessionEnd(end)) =
            sessions.observe(&state(TcpState::Established, TcpState::Close, 80, 3))
        else {
            panic!("no session_end")
        };
        assert_eq!(
            end.opened,
            Some(Timestamp::from_millisecond(1_800_000_000_000).unwrap())
        );
        assert_eq!(end.account.retransmits(), 1);
        assert!(sessions.live.is_empty() && sessions.connecting.is_empty());
    }

    #[test]
    fn the_kernel_sides_start_stands_in_for_a_filtered_one() {
        // `--state=time_wait`: only the end arrives, with its socket's start.
        let mut sessions = Sessions::new(16);
        let mut end = state(TcpState::FinWait2, TcpState::TimeWait, 40000, 9000);
        if let Event::State(change) = &mut end {
            change.close = Some(crate::events::Close::TimeWait);
            change.opened = Some(socket(40000, 10).time);
        }
        let Some(Event::SessionEnd(end)) = sessions.observe(&end) else {
            panic!("no session_end")
        };
        assert_eq!(end.opened, Some(socket(40000, 10).time));
    }

    #[test]
    fn a_reused_socket_address_is_another_connection() {
        let mut sessions = Sessions::new(16);
        let mut first = retransmit(Cause::Fast, 200, 1, 40000, 0);
        let mut second = retransmit(Cause::Rto, 200, 1, 40001, 5);
        for event in [&mut first, &mut second] {
            if let Event::Retransmit(r) = event {
                r.socket.skaddr = 0xbbbb;
            }
        }
        sessions.observe(&first);
        sessions.observe(&second);
        assert_eq!(sessions.take().len(), 2);
    }

    #[test]
    fn a_connection_that_predates_the_tool_has_no_opening() {
        let mut sessions = Sessions::new(16);
        sessions.observe(&retransmit(Cause::Fast, 200, 1, 40000, 0));
        let Some(Event::SessionEnd(end)) =
            sessions.observe(&state(TcpState::Established, TcpState::Close, 40000, 5))
        else {
            panic!("no session_end")
        };
        assert_eq!((end.opened, end.account.retransmits()), (None, 1));
    }

    #[test]
    fn listeners_are_not_connections() {
        let mut sessions = Sessions::new(16);
        assert_eq!(
            sessions.observe(&state(TcpState::Close, TcpState::Listen, 80, 0)),
            None
        );
        assert_eq!(
            sessions.observe(&state(TcpState::Listen, TcpState::Close, 80, 1)),
            None
        );
        assert!(sessions.live.is_empty());
    }

    #[test]
    fn the_flow_table_is_sorted_and_bounded() {
        let mut sessions = Sessions::new(2);
        sessions.observe(&retransmit(Cause::Rto, 200, 1, 1, 0));
        sessions.observe(&retransmit(Cause::Fast, 200, 1, 2, 1));
        sessions.observe(&retransmit(Cause::Fast, 200, 1, 2, 2));
        // Full: port 1, quiet the longest, is forgotten.
        sessions.observe(&retransmit(Cause::Tlp, 200, 1, 3, 3));
        let flows = sessions.take();
        let ports: Vec<u16> = flows.iter().map(|s| s.socket.lport).collect();
        assert_eq!(ports, [2, 3]);
        assert!(sessions.take().is_empty(), "taken");
    }

    #[test]
    fn a_full_table_forgets_its_quietest_sixteenth_at_once() {
        let mut sessions = Sessions::new(32);
        for port in 0..32 {
            sessions.observe(&retransmit(Cause::Rto, 200, 1, port, i64::from(port)));
        }
        // Port 0 is heard from again: 1 and 2 are now the quietest.
        sessions.observe(&retransmit(Cause::Rto, 200, 1, 0, 40));
        sessions.observe(&retransmit(Cause::Rto, 200, 1, 99, 41));
        let mut ports: Vec<u16> = sessions.take().iter().map(|s| s.socket.lport).collect();
        ports.sort_unstable();
        let kept: Vec<u16> = [0].into_iter().chain(3..32).chain([99]).collect();
        assert_eq!(ports, kept);
    }
}
