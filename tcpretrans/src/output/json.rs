//! JSON Lines: one object per event, one schema for all kinds. Field names
//! are documented in the README and stable.
//!
//! Event lines are written by hand into the output buffer: with serde's
//! derive, escaping the (constant) keys and dispatching flattened maps took
//! most of a line's time. The rare `start` and `summary` lines use serde.
use std::{
    fmt::Display,
    io::{self, Write},
    net::IpAddr,
    time::Duration,
};

use jiff::Timestamp;
use serde::{Serialize, Serializer};

use super::{Output, errno_name};
use crate::events::{Account, Event, Retransmit, Socket, StateChange, TcpState};
use crate::{
    identity::Identity,
    loader::MapEntries,
    netns::Occupancy,
    reconcile::{Comparison, NotCompared},
    sessions::Session,
    summary::{Summary, state_name},
};

/// A key as written after a previous field, `,"name":`, made at compile
/// time.
macro_rules! key {
    ($name:literal) => {
        const { Key::new(concat!(",\"", $name, "\":")) }
    };
}

/// Output is handed to the writer in pieces of about this size (and on
/// every flush).
const WRITE_SIZE: usize = 64 * 1024;

pub struct Json<W: Write> {
    out: W,
    buf: Vec<u8>,
    times: TimeText,
    /// No `start` event.
    quiet: bool,
}

impl<W: Write> Json<W> {
    pub fn new(writer: W, quiet: bool) -> Self {
        Self {
            out: writer,
            buf: Vec::with_capacity(WRITE_SIZE + 4096),
            times: TimeText::default(),
            quiet,
        }
    }

    /// A line for an object: `{"event":...,"time":...`, fields from the
    /// caller, `}` and newline.
    fn line(&mut self, event: &'static str, time: Timestamp) -> Fields<'_> {
        self.buf.extend_from_slice(b"{\"event\":\"");
        append(&mut self.buf, event.as_bytes());
        self.buf.push(b'"');
        let mut fields = Fields {
            buf: &mut self.buf,
            times: &mut self.times,
            empty: false,
        };
        fields.time(key!("time"), time);
        fields
    }

    fn end_line(&mut self) -> io::Result<()> {
        self.buf.extend_from_slice(b"}\n");
        if self.buf.len() >= WRITE_SIZE {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        let written = self.out.write_all(&self.buf);
        self.buf.clear();
        written
    }

    /// A serde line (`start`, `summary`).
    fn serde_line(&mut self, line: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.buf, line)?;
        self.buf.push(b'\n');
        Ok(())
    }
}

/// RFC 3339 in UTC with microseconds, `2026-11-22T10:11:12.345678Z`. The
/// text up to the second is kept from the previous event: events come in
/// time order, many per second.
#[derive(Default)]
struct TimeText {
    second: Option<i64>,
    /// `2026-11-22T10:11:12`.
    up_to_second: Vec<u8>,
}

impl TimeText {
    fn write(&mut self, buf: &mut Vec<u8>, time: Timestamp) {
        let second = time.as_second();
        if self.second != Some(second) {
            self.up_to_second.clear();
            let whole = Timestamp::from_second(second).unwrap_or(time);
            // `{:.0}`: `2026-11-22T10:11:12Z`.
            let _ = write!(self.up_to_second, "{whole:.0}");
            self.up_to_second.pop();
            self.second = Some(second);
        }
        append(buf, &self.up_to_second);
        // `.123456Z`.
        let micros = time.subsec_nanosecond().unsigned_abs() / 1000;
        put::<8>(buf, |text| {
            text[0] = b'.';
            fill_digits(&mut text[1..7], micros.into());
            text[7] = b'Z';
            8
        });
    }
}

/// A key from `key!`, in a block of fixed size: copying a block of known
/// size compiles to a few moves, where a short copy of unknown length is a
/// call to `memcpy` (the most time of a line went there).
#[derive(Clone, Copy)]
struct Key {
    block: [u8; Key::BLOCK],
    len: usize,
}

impl Key {
    /// Room for the longest key, `,"first_retransmit":`.
    const BLOCK: usize = 24;

    const fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        assert!(bytes.len() <= Self::BLOCK, "key longer than Key::BLOCK");
        let mut block = [0; Self::BLOCK];
        let mut i = 0;
        while i < bytes.len() {
            block[i] = bytes[i];
            i += 1;
        }
        Self {
            block,
            len: bytes.len(),
        }
    }
}

/// The fields of one JSON object, written straight into the output. Keys
/// are the schema's names (ASCII needing no escaping); `null` stands for
/// what this kernel could not tell, never a guess.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    times: &'a mut TimeText,
    /// No field written yet: only `key_text` asks (keys from `key!` come
    /// after a line's `event`).
    empty: bool,
}

impl Fields<'_> {
    /// A key after the fields before it (every line starts with `event`).
    fn key(&mut self, key: Key) {
        let at = self.buf.len();
        self.buf.reserve(Key::BLOCK);
        // SAFETY: the capacity holds `BLOCK` more bytes; the length grows
        // only by the key's bytes, which the copy initialized.
        unsafe {
            std::ptr::copy_nonoverlapping(
                key.block.as_ptr(),
                self.buf.as_mut_ptr().add(at),
                Key::BLOCK,
            );
            self.buf.set_len(at + key.len);
        }
    }

    /// A key not known at compile time (a cause name, plain ASCII), first
    /// or after others.
    fn key_text(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        self.buf.push(b'"');
        append(self.buf, key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn null(&mut self, key: Key) {
        self.key(key);
        self.buf.extend_from_slice(b"null");
    }

    /// `value`, or `null`.
    fn optional<T>(&mut self, key: Key, value: Option<T>, write: fn(&mut Self, Key, T)) {
        match value {
            Some(value) => write(self, key, value),
            None => self.null(key),
        }
    }

    /// One of the schema's names: needs no escaping.
    fn name(&mut self, key: Key, name: &'static str) {
        self.key(key);
        self.buf.push(b'"');
        append(self.buf, name.as_bytes());
        self.buf.push(b'"');
    }

    /// Any text (a process name), escaped.
    fn text(&mut self, key: Key, text: &str) {
        self.key(key);
        self.buf.push(b'"');
        let plain = text
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if plain {
            append(self.buf, text.as_bytes());
            self.buf.push(b'"');
            return;
        }
        for c in text.chars() {
            match c {
                '"' => self.buf.extend_from_slice(b"\\\""),
                '\\' => self.buf.extend_from_slice(b"\\\\"),
                '\n' => self.buf.extend_from_slice(b"\\n"),
                '\t' => self.buf.extend_from_slice(b"\\t"),
                '\r' => self.buf.extend_from_slice(b"\\r"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.buf, "\\u{:04x}", u32::from(c));
                }
                c => append(self.buf, c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        self.buf.push(b'"');
    }

    fn integer(&mut self, key: Key, value: impl Into<u64>) {
        self.key(key);
        decimal(self.buf, value.into());
    }

    fn signed(&mut self, key: Key, value: i32) {
        self.key(key);
        if value < 0 {
            self.buf.push(b'-');
        }
        decimal(self.buf, value.unsigned_abs().into());
    }

    fn boolean(&mut self, key: Key, value: bool) {
        self.key(key);
        append(self.buf, if value { b"true" } else { b"false" });
    }

    /// A value whose text needs no escaping, quoted.
    fn quoted(&mut self, key: Key, value: impl Display) {
        self.key(key);
        self.buf.push(b'"');
        let _ = write!(self.buf, "{value}");
        self.buf.push(b'"');
    }

    /// `"0xffff8881062c9280"`.
    fn hex(&mut self, key: Key, value: u64) {
        self.key(key);
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1) as usize;
        put::<20>(self.buf, |text| {
            text[..3].copy_from_slice(b"\"0x");
            for (i, digit) in text[3..3 + digits].iter_mut().enumerate() {
                let nibble = (value >> ((digits - 1 - i) * 4)) & 0xf;
                *digit = b"0123456789abcdef"[nibble as usize];
            }
            text[3 + digits] = b'"';
            digits + 4
        });
    }

    fn address(&mut self, key: Key, address: IpAddr) {
        match address {
            IpAddr::V4(v4) => {
                self.key(key);
                // `"255.255.255.255"` at most.
                put::<17>(self.buf, |text| {
                    text[0] = b'"';
                    let mut len = 1;
                    for octet in v4.octets() {
                        if octet >= 100 {
                            text[len] = b'0' + octet / 100;
                            len += 1;
                        }
                        if octet >= 10 {
                            text[len] = b'0' + octet / 10 % 10;
                            len += 1;
                        }
                        text[len] = b'0' + octet % 10;
                        text[len + 1] = b'.';
                        len += 2;
                    }
                    // The last dot.
                    text[len - 1] = b'"';
                    len
                });
            }
            IpAddr::V6(v6) => self.quoted(key, v6),
        }
    }

    fn time(&mut self, key: Key, time: Timestamp) {
        self.key(key);
        self.buf.push(b'"');
        self.times.write(self.buf, time);
        self.buf.push(b'"');
    }

    /// Milliseconds to the microsecond, as a JSON number in the shortest
    /// form that reads back exactly (`800.0`, `1.5`, `0.026`): the decimal
    /// itself, made from the integer count of microseconds.
    fn millis(&mut self, key: Key, duration: Duration) {
        let micros = micros(duration);
        self.key(key);
        decimal(self.buf, micros / 1000);
        put::<4>(self.buf, |text| {
            text[0] = b'.';
            fill_digits(&mut text[1..], micros % 1000);
            // Trailing zeros dropped, one digit kept.
            let len = text.iter().rposition(|&b| b != b'0').map_or(1, |i| i + 1);
            len.max(2)
        });
    }

    fn state(&mut self, key: Key, state: Option<TcpState>) {
        self.optional(key, state.map(TcpState::name), Self::name);
    }

    /// Fields every socket event has.
    fn socket(&mut self, s: &Socket) {
        self.integer(key!("family"), s.family);
        self.address(key!("laddr"), s.laddr);
        self.integer(key!("lport"), s.lport);
        self.address(key!("raddr"), s.raddr);
        self.integer(key!("rport"), s.rport);
        self.optional(key!("netns"), s.netns, Self::integer);
        self.hex(key!("skaddr"), s.skaddr);
        let owner = s.owner.as_ref();
        self.optional(key!("pid"), owner.map(|p| p.pid), Self::integer);
        self.optional(key!("uid"), owner.map(|p| p.uid), Self::integer);
        self.optional(key!("comm"), owner.map(|p| p.comm.as_str()), Self::text);
        let identity = s.identity.as_deref();
        self.optional(
            key!("cgroup"),
            identity.map(|i| i.cgroup.as_str()),
            Self::text,
        );
        let of =
            |field: fn(&Identity) -> &Option<String>| identity.and_then(|i| field(i).as_deref());
        self.optional(key!("container_id"), of(|i| &i.container_id), Self::text);
        self.optional(key!("pod_uid"), of(|i| &i.pod_uid), Self::text);
        self.optional(key!("pod_namespace"), of(|i| &i.pod_namespace), Self::text);
        self.optional(key!("pod"), of(|i| &i.pod), Self::text);
    }

    fn retransmit(&mut self, r: &Retransmit) {
        let micros = |d: Option<Duration>| d.map(micros);
        self.state(key!("state"), r.state);
        self.signed(key!("err"), r.err);
        self.optional(key!("type"), r.cause.map(|c| c.name()), Self::name);
        self.optional(key!("rto_ms"), r.rto, Self::millis);
        self.optional(key!("backoff"), r.backoff, Self::integer);
        self.optional(key!("retries"), r.retries, Self::integer);
        self.optional(key!("retry_limit"), r.retry_limit, Self::integer);
        self.optional(key!("total_retrans"), r.total_retrans, Self::integer);
        self.optional(key!("srtt_us"), micros(r.srtt), Self::integer);
        self.optional(key!("rttvar_us"), micros(r.rttvar), Self::integer);
        self.optional(key!("cwnd"), r.cwnd, Self::integer);
        self.optional(key!("ssthresh"), r.ssthresh, Self::integer);
        self.optional(key!("segs"), r.segs, Self::integer);
        self.optional(key!("unseen_segs"), r.unseen_segs, Self::integer);
        self.optional(key!("bytes"), r.bytes, Self::integer);
        self.optional(key!("seq"), r.seq, Self::integer);
        self.optional(key!("orphan"), r.orphan, Self::boolean);
    }

    /// How a transition reads, in `state` and `session_end` lines.
    fn transition(&mut self, change: &StateChange) {
        self.state(key!("old_state"), change.old_state);
        self.state(key!("new_state"), change.new_state);
        self.optional(key!("close"), change.close.map(|c| c.name()), Self::name);
        match change.error {
            Some(errno) => self.text(key!("error"), &errno_name(errno)),
            None => self.null(key!("error")),
        }
        self.optional(key!("orphan"), change.orphan, Self::boolean);
    }

    /// A connection's (or flow's) retransmissions.
    fn account(&mut self, a: &Account) {
        self.integer(key!("retransmits"), a.retransmits());
        self.key(key!("by_type"));
        self.buf.push(b'{');
        let mut by_type = Fields {
            buf: self.buf,
            times: self.times,
            empty: true,
        };
        for (cause, count) in a.causes() {
            by_type.key_text(cause);
            decimal(by_type.buf, count);
        }
        self.buf.push(b'}');
        self.integer(key!("segments"), a.segments);
        self.integer(key!("failed"), a.failed);
        self.integer(key!("unseen_segments"), a.unseen);
        self.optional(key!("max_rto_ms"), a.max_rto, Self::millis);
        self.optional(key!("first_retransmit"), a.first, Self::time);
        self.optional(key!("last_retransmit"), a.last, Self::time);
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::Retransmit(r) => {
                self.socket(&r.socket);
                self.retransmit(r);
            }
            Event::State(change) => {
                self.socket(&change.socket);
                self.transition(change);
                self.optional(key!("prev_state_ms"), change.prev_state, Self::millis);
            }
            Event::SessionEnd(end) => {
                let socket = &end.change.socket;
                self.socket(socket);
                self.transition(&end.change);
                self.optional(key!("opened"), end.opened, Self::time);
                self.optional(
                    key!("duration_ms"),
                    end.opened
                        .map(|t| socket.time.duration_since(t).unsigned_abs()),
                    Self::millis,
                );
                self.account(&end.account);
            }
            Event::Reset {
                socket,
                direction,
                state,
            } => {
                self.socket(socket);
                self.name(key!("direction"), direction.name());
                self.state(key!("state"), *state);
            }
            Event::ConnectError { socket, errno } => {
                self.socket(socket);
                self.text(key!("error"), &errno_name(*errno));
            }
            Event::TimeWaitReuse { socket, time_wait } => {
                self.socket(socket);
                self.millis(key!("time_wait_ms"), *time_wait);
            }
            Event::Lost { count, .. } => self.integer(key!("count"), *count),
        }
    }
}

/// Appends a short piece of a line. `extend_from_slice` calls `memcpy` for
/// a copy whose length is unknown at compile time, and a line is made of
/// some 30 such pieces (numbers, names, addresses): those calls took a sixth
/// of the tracer's time. Pieces up to 32 bytes are copied inline, as their
/// first and last bytes in two overlapping moves of a fixed size.
#[inline]
fn append(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if len > 32 {
        return buf.extend_from_slice(bytes);
    }
    buf.reserve(len);
    let at = buf.len();
    // SAFETY: there is room for `len` bytes at `at`; every move reads
    // inside `bytes` and writes inside `at..at + len`, all of which it
    // initializes.
    unsafe {
        let (src, dst) = (bytes.as_ptr(), buf.as_mut_ptr().add(at));
        match len {
            0 => {}
            1 => *dst = *src,
            2..4 => move_ends::<2>(src, dst, len),
            4..8 => move_ends::<4>(src, dst, len),
            8..16 => move_ends::<8>(src, dst, len),
            _ => move_ends::<16>(src, dst, len),
        }
        buf.set_len(at + len);
    }
}

/// An integer's decimal digits.
fn decimal(buf: &mut Vec<u8>, value: u64) {
    let digits = value.checked_ilog10().map_or(1, |d| d as usize + 1);
    put::<20>(buf, |text| {
        fill_digits(&mut text[..digits], value);
        digits
    });
}

/// Fills `text` with the last `text.len()` decimal digits of `value`,
/// zero-padded.
fn fill_digits(text: &mut [u8], mut value: u64) {
    for digit in text.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Writes a piece of at most `N` bytes straight into the line: `write`
/// fills the block and says how many of its bytes to keep. (Made in a
/// block on the stack and copied, such pieces stalled the copy, whose wide
/// loads waited for the narrow stores.)
#[inline(always)]
fn put<const N: usize>(buf: &mut Vec<u8>, write: impl FnOnce(&mut [u8; N]) -> usize) {
    let at = buf.len();
    buf.resize(at + N, 0);
    let kept = buf[at..].first_chunk_mut::<N>().map_or(0, write);
    buf.truncate(at + kept);
}

/// Copies `len` bytes, `N <= len <= 2 * N`, as the first `N` and the last
/// `N`.
///
/// # Safety
///
/// `src` is readable and `dst` writable for `len` bytes.
#[inline(always)]
unsafe fn move_ends<const N: usize>(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: per the contract, both ends lie inside the `len` bytes.
    unsafe {
        let head = src.cast::<[u8; N]>().read_unaligned();
        let tail = src.add(len - N).cast::<[u8; N]>().read_unaligned();
        dst.cast::<[u8; N]>().write_unaligned(head);
        dst.add(len - N).cast::<[u8; N]>().write_unaligned(tail);
    }
}

/// When an event happened.
fn event_time(event: &Event) -> Timestamp {
    match event {
        Event::Retransmit(r) => r.socket.time,
        Event::State(change) => change.socket.time,
        Event::SessionEnd(end) => end.change.socket.time,
        Event::Reset { socket, .. }
        | Event::ConnectError { socket, .. }
        | Event::TimeWaitReuse { socket, .. } => socket.time,
        Event::Lost { time, .. } => *time,
    }
}

fn micros(d: Duration) -> u64 {
    d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
}

/// RFC 3339 with microseconds, for serde lines (`TimeText`'s format).
#[derive(Clone, Copy)]
struct Time(Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = Vec::with_capacity(32);
        TimeText::default().write(&mut text, self.0);
        // The text is ASCII.
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// Last line of a session.
#[derive(Serialize)]
struct SummaryLine<'a> {
    event: &'static str,
    time: Time,
    events: u64,
    lost: u64,
    /// Of `lost`: program runs the kernel skipped (the rest found the ring
    /// buffer full).
    lost_skipped: u64,
    /// Kernel reads that failed, each leaving a field 0.
    failed_reads: u64,
    /// Sent retransmissions, their segments, failed attempts: as in
    /// `session_end` and `flow`.
    retransmits: u64,
    by_type: ByType<'a>,
    segments: u64,
    failed: u64,
    /// Found in the gaps of the sockets' counts, under any filter.
    unseen_segments: u64,
    /// The namespace whose `Tcp: RetransSegs` was compared, the counts
    /// compared, and what the kernel counted beyond the reported; all null
    /// when not compared (`not_compared` says why).
    compared_netns: Option<u32>,
    kernel_retransmitted_segments: Option<u64>,
    kernel_failed_segments: Option<u64>,
    reported_segments: Option<u64>,
    unseen: Option<u64>,
    not_compared: Option<&'static str>,
    transitions: Vec<Transition>,
    netns: Vec<&'a Occupancy>,
    kernel_maps: Option<MapEntries>,
}

/// `{"RTO":3,"FAST":12}`, in the causes' order.
struct ByType<'a>(&'a Account);

impl Serialize for ByType<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.causes())
    }
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

impl<W: Write> Output for Json<W> {
    fn header(&mut self, at: Timestamp) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        self.serde_line(&Start {
            event: "start",
            time: Time(at),
            version: env!("CARGO_PKG_VERSION"),
        })
    }

    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line(event.name(), event_time(event)).event(event);
        self.end_line()
    }

    fn flows(&mut self, at: Timestamp, flows: &[Session], total: usize) -> io::Result<()> {
        for (i, flow) in flows.iter().enumerate() {
            let mut line = self.line("flow", at);
            line.integer(key!("rank"), i as u64 + 1);
            line.integer(key!("flows"), total as u64);
            line.socket(&flow.socket);
            line.account(&flow.account);
            self.end_line()?;
        }
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let r = &summary.retransmits;
        let compared = summary
            .reconciliation
            .as_ref()
            .and_then(|c| c.as_ref().ok());
        let not_compared = summary
            .reconciliation
            .as_ref()
            .and_then(|c| c.as_ref().err());
        self.serde_line(&SummaryLine {
            event: "summary",
            time: Time(Timestamp::now()),
            events: summary.events,
            lost: summary.lost,
            lost_skipped: summary.lost_skipped,
            failed_reads: summary.failed_reads,
            retransmits: r.retransmits(),
            by_type: ByType(r),
            segments: r.segments,
            failed: r.failed,
            unseen_segments: r.unseen,
            compared_netns: compared.map(|c| c.netns),
            kernel_retransmitted_segments: compared.map(|c| c.kernel),
            kernel_failed_segments: compared.map(|c| c.kernel_failed),
            reported_segments: compared.map(|c| c.reported),
            unseen: compared.map(Comparison::unseen),
            not_compared: not_compared.map(NotCompared::name),
            transitions: summary
                .transitions()
                .map(|((old, new), count)| Transition {
                    old_state: state_name(old),
                    new_state: state_name(new),
                    count,
                })
                .collect(),
            netns: summary
                .occupancy
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .collect(),
            kernel_maps: summary.kernel_maps,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        events::{Close, Process, ResetDirection, Retransmit, StateChange},
        fixtures::sample_retransmit,
    };

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
            cgroup: None,
            identity: None,
        }
    }

    /// What `write` makes of one field.
    fn field(write: impl FnOnce(&mut Fields)) -> String {
        let mut buf = Vec::new();
        write(&mut Fields {
            buf: &mut buf,
            times: &mut TimeText::default(),
            empty: false,
        });
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn milliseconds_read_as_the_shortest_float() {
        let samples = (0..3000).chain([999_999, 1_000_000, 1_234_567, 86_400_000_000]);
        for micros in samples.chain([123_456_789_012_345]) {
            let float = serde_json::to_string(&(micros as f64 / 1e3)).unwrap();
            assert_eq!(
                field(|f| f.millis(key!("ms"), Duration::from_micros(micros))),
                format!(",\"ms\":{float}")
            );
        }
    }

    #[test]
    fn ipv4_addresses_read_as_display_writes_them() {
        for octets in [
            [0, 9, 10, 99],
            [100, 199, 200, 255],
            [127, 0, 0, 1],
            [255; 4],
        ] {
            let addr = Ipv4Addr::from(octets);
            assert_eq!(
                field(|f| f.address(key!("a"), IpAddr::V4(addr))),
                format!(",\"a\":\"{addr}\"")
            );
        }
    }

    #[test]
    fn hex_is_lowercase_without_leading_zeros() {
        for value in [0, 0xf, 0x10, 0xffff_8881_062c_9280, u64::MAX] {
            assert_eq!(
                field(|f| f.hex(key!("h"), value)),
                format!(",\"h\":\"{value:#x}\"")
            );
        }
    }

    #[test]
    fn integers_in_decimal() {
        for value in [0, 9, 10, 99, 100, 4_026_532_313, u64::MAX] {
            assert_eq!(
                field(|f| f.integer(key!("n"), value)),
                format!(",\"n\":{value}")
            );
        }
        for value in [0, -5, 110, i32::MIN, i32::MAX] {
            assert_eq!(
                field(|f| f.signed(key!("n"), value)),
                format!(",\"n\":{value}")
            );
        }
    }

    #[test]
    fn append_copies_pieces_of_every_length() {
        let source: Vec<u8> = (0..40).map(|i| b'a' + i).collect();
        for len in 0..=source.len() {
            let mut buf = b"line".to_vec();
            append(&mut buf, &source[..len]);
            assert_eq!(&buf[..4], b"line");
            assert_eq!(&buf[4..], &source[..len], "length {len}");
        }
    }

    #[test]
    fn retransmit_schema() {
        let owner = Process {
            pid: 7,
            uid: 0,
            comm: "nginx".into(),
        };
        let mut r = sample_retransmit(socket(Some(owner)));
        let container = "0123456789abcdef".repeat(4);
        let cgroup = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c2f9a4e_1d3b_4c5a_9e7f_2b8d6a1c3e5f.slice/cri-containerd-{container}.scope"
        );
        r.socket.identity = Some(std::sync::Arc::new(Identity {
            cgroup: cgroup.clone(),
            container_id: Some(container.clone()),
            pod_uid: Some("0c2f9a4e-1d3b-4c5a-9e7f-2b8d6a1c3e5f".into()),
            pod_namespace: Some("shop".into()),
            pod: Some("cart-7d9f".into()),
        }));
        let v = render(&Event::Retransmit(Box::new(r)));
        assert_eq!(
            v,
            json!({
                "event": "retransmit", "time": "2026-11-22T10:11:12.345678Z", "family": 6,
                "laddr": "::1", "lport": 40000, "raddr": "10.0.0.2", "rport": 80,
                "netns": 4026532289u32, "skaddr": "0xffff88800abcd000",
                "pid": 7, "uid": 0, "comm": "nginx", "cgroup": cgroup, "container_id": container,
                "pod_uid": "0c2f9a4e-1d3b-4c5a-9e7f-2b8d6a1c3e5f", "pod_namespace": "shop",
                "pod": "cart-7d9f", "state": "ESTABLISHED", "err": 0,
                "type": "RTO", "rto_ms": 800.0, "backoff": 2, "retries": 2, "retry_limit": 15,
                "total_retrans": 9, "srtt_us": 12345, "rttvar_us": 3000, "cwnd": 1, "ssthresh": 7,
                "segs": 2, "unseen_segs": null, "bytes": 2896, "seq": 1000000, "orphan": false
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
            opened: None,
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
            socket: Box::new(socket(None)),
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

    #[test]
    fn process_names_are_escaped() {
        let owner = Process {
            pid: 1,
            uid: 0,
            comm: "a\"b\\c\n\u{1}é".into(),
        };
        let change = StateChange {
            socket: socket(Some(owner)),
            ..change(Some(TcpState::Established), Some(TcpState::FinWait1))
        };
        let v = render(&Event::State(Box::new(change)));
        assert_eq!(v["comm"], "a\"b\\c\n\u{1}é");
    }

    /// An account of three attempts: two sent (3 and 1 segments), one the
    /// kernel could not send.
    fn account_with_a_failed_attempt() -> Account {
        let mut account = Account::default();
        for (segs, err) in [(3, 0), (5, -16), (1, 0)] {
            account.record(&Retransmit {
                segs: Some(segs),
                err,
                ..sample_retransmit(socket(None))
            });
        }
        account
    }

    #[test]
    fn session_end_and_flow_count_failed_attempts_apart() {
        let end = Event::SessionEnd(Box::new(crate::events::SessionEnd {
            change: change(Some(TcpState::Established), Some(TcpState::Close)),
            opened: None,
            account: account_with_a_failed_attempt(),
        }));
        let v = render(&end);
        assert_eq!(
            (
                &v["retransmits"],
                &v["by_type"],
                &v["segments"],
                &v["failed"]
            ),
            (&json!(2), &json!({"RTO": 2}), &json!(4), &json!(1)),
            "{v}"
        );
        let mut buf = Vec::new();
        {
            let mut out = Json::new(&mut buf, false);
            let flow = Session {
                socket: socket(None),
                opened: None,
                account: account_with_a_failed_attempt(),
            };
            out.flows(Timestamp::UNIX_EPOCH, &[flow], 1).unwrap();
            out.flush().unwrap();
        }
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            (&v["event"], &v["retransmits"], &v["segments"], &v["failed"]),
            (&json!("flow"), &json!(2), &json!(4), &json!(1)),
            "{v}"
        );
    }

    fn render_summary(summary: &Summary) -> Value {
        let mut buf = Vec::new();
        {
            let mut out = Json::new(&mut buf, false);
            out.summary(summary).unwrap();
            out.flush().unwrap();
        }
        serde_json::from_slice(&buf).unwrap()
    }

    #[test]
    fn summary_carries_the_retransmissions_and_the_kernels_count() {
        let mut summary = Summary::default();
        summary.retransmits = account_with_a_failed_attempt();
        summary.reconciliation = Some(Ok(Comparison {
            netns: 4026532246,
            kernel: 2593,
            kernel_failed: 6,
            kernel_sent_around: 2587,
            reported: 2547,
        }));
        let v = render_summary(&summary);
        assert_eq!(v["event"], "summary");
        assert_eq!(
            (
                &v["retransmits"],
                &v["by_type"],
                &v["segments"],
                &v["failed"]
            ),
            (&json!(2), &json!({"RTO": 2}), &json!(4), &json!(1))
        );
        assert_eq!(
            (
                &v["compared_netns"],
                &v["kernel_retransmitted_segments"],
                &v["kernel_failed_segments"],
                &v["reported_segments"],
                &v["unseen"],
                &v["not_compared"]
            ),
            (
                &json!(4026532246u32),
                &json!(2593),
                &json!(6),
                &json!(2547),
                &json!(40),
                &Value::Null
            )
        );

        summary.reconciliation = Some(Err(NotCompared::Filtered));
        let v = render_summary(&summary);
        assert_eq!(v["not_compared"], "filtered");
        for null in [
            "compared_netns",
            "kernel_retransmitted_segments",
            "kernel_failed_segments",
            "reported_segments",
            "unseen",
        ] {
            assert_eq!(v[null], Value::Null, "{null}");
        }
    }

    #[test]
    fn times_keep_leading_zeros_and_follow_the_second() {
        let mut buf = Vec::new();
        {
            let mut out = Json::new(&mut buf, false);
            for time in [
                "2026-11-22T10:11:12.000042Z",
                "2026-11-22T10:11:12.5Z",
                "2026-11-22T10:11:13.000001999Z",
                "2027-01-01T00:00:00Z",
            ] {
                let time = time.parse().unwrap();
                out.event(&Event::Lost { time, count: 1 }).unwrap();
            }
            out.flush().unwrap();
        }
        let times: Vec<String> = serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Value>()
            .map(|v| v.unwrap()["time"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            times,
            [
                "2026-11-22T10:11:12.000042Z",
                "2026-11-22T10:11:12.500000Z",
                "2026-11-22T10:11:13.000001Z",
                "2027-01-01T00:00:00.000000Z",
            ]
        );
    }
}
