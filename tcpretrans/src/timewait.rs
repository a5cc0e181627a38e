//! TIME_WAIT reuse: a new connection on a 4-tuple that is still in TIME_WAIT
//! (`tcp_tw_reuse`). The kernel counts it (`TWRecycled`) but reports no
//! connection, so the 4-tuples the tool saw enter TIME_WAIT are remembered
//! for as long as TIME_WAIT lasts.
//!
//! A 4-tuple is remembered by a 64-bit hash of it, and its time as a 64-bit
//! count of microseconds: 16 bytes an entry in each of the two tables, a
//! quarter of what the tuple and a `Timestamp` took, at a chance of a false
//! reuse of about 1 in 2^48 per connection.
use std::{collections::VecDeque, hash::BuildHasher, time::Duration};

use foldhash::{HashMap, fast::RandomState};

use crate::events::{Close, Event, TcpState};

/// `TCP_TIMEWAIT_LEN`, in microseconds: how long a timewait socket lives.
const TIME_WAIT_LEN_US: i64 = 60_000_000;

/// The TIME_WAIT entries seen, oldest first, bounded in number.
#[derive(Debug)]
pub struct TimeWaits {
    /// When each 4-tuple (by hash) entered TIME_WAIT, in microseconds
    /// since the epoch (a plain number: compared at every event).
    entered: HashMap<u64, i64>,
    order: VecDeque<(u64, i64)>,
    capacity: usize,
    tuple_hash: RandomState,
}

impl TimeWaits {
    pub fn new(capacity: usize) -> Self {
        Self {
            entered: HashMap::default(),
            order: VecDeque::new(),
            capacity,
            tuple_hash: RandomState::default(),
        }
    }

    /// Takes note of an event; returns a `TimeWaitReuse` event when it is a
    /// connection established on a 4-tuple still in TIME_WAIT.
    pub fn observe(&mut self, event: &Event) -> Option<Event> {
        let Event::State(change) = event else {
            return None;
        };
        let now = change.socket.time.as_microsecond();
        self.expire(now);
        let tuple = || self.tuple_hash.hash_one(change.socket.four_tuple());
        // A timewait socket still in FIN_WAIT2 moves on to TIME_WAIT when
        // the peer's FIN comes, which no tracepoint reports: its 4-tuple is
        // remembered from the hand-over either way.
        if matches!(
            change.close,
            Some(Close::TimeWait | Close::FinWait2Timewait)
        ) {
            self.insert(tuple(), now);
            return None;
        }
        match (change.old_state, change.new_state) {
            (Some(TcpState::SynSent), Some(TcpState::Established)) => {
                let entered = self.entered.remove(&tuple())?;
                let age = Duration::from_micros(now.saturating_sub(entered).unsigned_abs());
                Some(Event::TimeWaitReuse {
                    socket: Box::new(change.socket.clone()),
                    time_wait: age,
                })
            }
            _ => None,
        }
    }

    fn insert(&mut self, tuple: u64, now: i64) {
        if self.order.len() == self.capacity
            && let Some((oldest, at)) = self.order.pop_front()
            && self.entered.get(&oldest) == Some(&at)
        {
            self.entered.remove(&oldest);
        }
        self.entered.insert(tuple, now);
        self.order.push_back((tuple, now));
    }

    /// Forgets entries whose timewait socket has expired.
    fn expire(&mut self, now: i64) {
        while let Some(&(tuple, at)) = self.order.front() {
            if now.saturating_sub(at) < TIME_WAIT_LEN_US {
                break;
            }
            self.order.pop_front();
            if self.entered.get(&tuple) == Some(&at) {
                self.entered.remove(&tuple);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::transition;

    fn state(old: TcpState, new: TcpState, lport: u16, at_secs: i64) -> Event {
        let mut event = transition(old, new, lport, at_secs * 1000);
        if let Event::State(change) = &mut event {
            change.close = match (old, new) {
                (_, TcpState::TimeWait) => Some(Close::TimeWait),
                (TcpState::FinWait2, TcpState::FinWait2) => Some(Close::FinWait2Timewait),
                _ => change.close,
            };
        }
        event
    }

    #[test]
    fn a_new_connection_on_a_time_wait_tuple_is_a_reuse() {
        let mut table = TimeWaits::new(16);
        assert!(
            table
                .observe(&state(TcpState::FinWait2, TcpState::TimeWait, 40000, 0))
                .is_none()
        );
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 40001, 1))
                .is_none(),
            "other port"
        );
        let reuse = table
            .observe(&state(TcpState::SynSent, TcpState::Established, 40000, 2))
            .expect("reuse");
        let Event::TimeWaitReuse { socket, time_wait } = reuse else {
            panic!()
        };
        assert_eq!((socket.lport, time_wait), (40000, Duration::from_secs(2)));
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 40000, 3))
                .is_none(),
            "once"
        );
    }

    #[test]
    fn a_timewait_socket_still_in_fin_wait2_is_reused_too() {
        let mut table = TimeWaits::new(16);
        table.observe(&state(TcpState::FinWait2, TcpState::FinWait2, 40000, 0));
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 40000, 2))
                .is_some()
        );
    }

    #[test]
    fn expired_time_waits_are_forgotten() {
        let mut table = TimeWaits::new(16);
        table.observe(&state(TcpState::FinWait2, TcpState::TimeWait, 40000, 0));
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 40000, 61))
                .is_none()
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = TimeWaits::new(2);
        for port in [1, 2, 3] {
            table.observe(&state(TcpState::FinWait2, TcpState::TimeWait, port, 0));
        }
        assert_eq!(table.entered.len(), 2);
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 1, 1))
                .is_none(),
            "evicted"
        );
        assert!(
            table
                .observe(&state(TcpState::SynSent, TcpState::Established, 3, 1))
                .is_some()
        );
    }
}
