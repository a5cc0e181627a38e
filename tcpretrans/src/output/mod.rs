//! Event output: aligned text for people, JSON Lines for pipelines.
//!
//! Both write into a buffer that the consumer flushes once per ring-buffer
//! drain: a person sees lines at once, a burst costs one `write`.
use std::io::{self, Write};

use jiff::Timestamp;
use nix::errno::Errno;

use crate::{
    events::{Event, NET_XMIT_DROP},
    sessions::Session,
    summary::Summary,
};

pub mod json;
pub mod text;

/// Formats events onto a writer.
pub trait Output {
    /// Once, when tracing has started: column headings, or a `start` event.
    fn header(&mut self, time: Timestamp) -> io::Result<()>;
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// With `-c`: the flow table, `flows` the first of `total`.
    fn flows(&mut self, time: Timestamp, flows: &[Session], total: usize) -> io::Result<()>;
    /// Once, at the end of a session but a `-c` one (text prints it on stderr).
    fn summary(&mut self, _summary: &Summary) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
}

/// `ETIMEDOUT` for errno 110; the number when it has no name.
pub fn errno_name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => errno.to_string(),
        known => format!("{known:?}"),
    }
}

/// A failed retransmission's `err`: `-EBUSY` for -16, `NET_XMIT_DROP`
/// for 1, the number when it has no name.
pub fn send_error_name(err: i32) -> String {
    match err {
        NET_XMIT_DROP => "NET_XMIT_DROP".to_owned(),
        errno if errno < 0 => match errno.checked_neg().map(Errno::from_raw) {
            Some(Errno::UnknownErrno) | None => errno.to_string(),
            Some(known) => format!("-{known:?}"),
        },
        other => other.to_string(),
    }
}

/// How events are printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub json: bool,
    /// Text: add SEQ and SEGS columns.
    pub sequence: bool,
    /// Text: endpoint columns wide enough for IPv6.
    pub wide_endpoints: bool,
    /// `-c`: flow tables instead of event lines.
    pub count: bool,
    /// Text: TIME in seconds since tracing started.
    pub relative_time: bool,
    /// No header line (text) or `start` event (JSON), no summary.
    pub quiet: bool,
    /// Text: ANSI colors for causes and troubles (`--color`).
    pub color: bool,
    /// Text: the POD column (`--pod`).
    pub pod: bool,
}

/// The output the arguments ask for, over `writer`.
pub fn new<W: Write + Send + 'static>(style: Style, writer: W) -> Box<dyn Output + Send> {
    if style.json {
        Box::new(json::Json::new(writer, style.quiet))
    } else {
        Box::new(text::Text::new(writer, style))
    }
}

#[cfg(test)]
mod tests {
    use super::{errno_name, send_error_name};

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(16), "EBUSY");
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(9999), "9999");
    }

    #[test]
    fn send_errors_name_errnos_and_queue_drops() {
        assert_eq!(send_error_name(-16), "-EBUSY");
        assert_eq!(send_error_name(1), "NET_XMIT_DROP");
        assert_eq!(send_error_name(-9999), "-9999");
        assert_eq!(send_error_name(7), "7");
        assert_eq!(send_error_name(i32::MIN), "-2147483648");
    }
}
