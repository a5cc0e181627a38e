//! Retransmissions the kernel made without giving them to the programs,
//! found connection by connection. Every retransmission adds its segments to
//! the socket's own count (`total_retrans`) before the tracepoint, and each
//! event carries the count: when it grew since the socket's previous event
//! by more than this event's segments, the difference was retransmitted
//! unseen. Unlike the namespace's counter (`reconcile`), this holds under
//! any filter. (Under CPU pressure the kernel has been seen to count a
//! whole TSO skb's retransmission whose tracepoint ran no program.) Before
//! 6.17 the tracepoint also skips a retransmission the kernel counted and
//! then failed to send, so that is a gap too; since, it is a failed attempt.
use foldhash::HashMap;

use crate::events::{Cause, Event, FourTuple, Retransmit, TcpState};

/// Sockets remembered at once: past it they are forgotten all together,
/// and each one's next event only sets its baseline again.
const SOCKETS_REMEMBERED: usize = 65_536;

/// Each socket's count as its last event read it.
#[derive(Debug, Default)]
pub struct Gaps {
    last: HashMap<(u64, FourTuple), u32>,
}

impl Gaps {
    /// Sets `unseen_segs` of a retransmission, or forgets a socket that
    /// closed (its kernel address may be reused).
    pub fn observe(&mut self, event: &mut Event) {
        match event {
            Event::Retransmit(r) => self.retransmit(r),
            Event::State(change) if change.new_state == Some(TcpState::Close) => {
                self.last
                    .remove(&(change.socket.skaddr, change.socket.four_tuple()));
            }
            _ => {}
        }
    }

    fn retransmit(&mut self, r: &mut Retransmit) {
        // A SYN-ACK's count is its listener's, which only fast open adds to.
        let (Some(total), false) = (r.total_retrans, r.cause == Some(Cause::SynAck)) else {
            return;
        };
        if self.last.len() >= SOCKETS_REMEMBERED {
            self.last.clear();
        }
        let key = (r.socket.skaddr, r.socket.four_tuple());
        let previous = self.last.insert(key, total);
        // A failed attempt may or may not have added its segments (the
        // kernel counts them only once it tried to send), so its count is
        // only a baseline.
        if !r.sent() {
            return;
        }
        r.unseen_segs = previous.map(|previous| {
            let grown = total.wrapping_sub(previous);
            let segs = u32::from(r.segs.unwrap_or(1));
            // Less than this event's own: not one socket's sequence (its
            // address was reused): no gap to tell.
            grown
                .checked_sub(segs)
                .filter(|_| grown < 1 << 31)
                .unwrap_or(0)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{loopback_socket, sample_retransmit};

    fn retransmit(lport: u16, total: u32, segs: u16, err: i32) -> Event {
        Event::Retransmit(Box::new(Retransmit {
            total_retrans: Some(total),
            segs: Some(segs),
            err,
            ..sample_retransmit(loopback_socket(lport, 0))
        }))
    }

    fn unseen(gaps: &mut Gaps, mut event: Event) -> Option<u32> {
        gaps.observe(&mut event);
        match event {
            Event::Retransmit(r) => r.unseen_segs,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_count_grown_past_the_segments_is_a_gap() {
        let mut gaps = Gaps::default();
        assert_eq!(unseen(&mut gaps, retransmit(1, 45, 45, 0)), None, "first");
        assert_eq!(unseen(&mut gaps, retransmit(1, 90, 45, 0)), Some(0));
        assert_eq!(unseen(&mut gaps, retransmit(1, 180, 45, 0)), Some(45));
        // Another socket has its own count.
        assert_eq!(unseen(&mut gaps, retransmit(2, 3, 1, 0)), None);
        assert_eq!(unseen(&mut gaps, retransmit(2, 4, 1, 0)), Some(0));
    }

    #[test]
    fn failed_attempts_and_reused_addresses_tell_no_gap() {
        let mut gaps = Gaps::default();
        unseen(&mut gaps, retransmit(1, 10, 1, 0));
        // Counted or not by the kernel: a baseline either way.
        assert_eq!(unseen(&mut gaps, retransmit(1, 12, 2, -105)), None);
        assert_eq!(unseen(&mut gaps, retransmit(1, 13, 1, 0)), Some(0));
        // A new socket at the same address, with a smaller count.
        assert_eq!(unseen(&mut gaps, retransmit(1, 1, 1, 0)), Some(0));
        let mut closed = crate::fixtures::transition(TcpState::FinWait1, TcpState::Close, 1, 0);
        gaps.observe(&mut closed);
        assert_eq!(
            unseen(&mut gaps, retransmit(1, 40, 1, 0)),
            None,
            "forgotten"
        );
    }
}
