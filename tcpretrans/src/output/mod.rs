//! Event output: aligned text for people, JSON Lines for pipelines.
//!
//! Both write into a buffer that the consumer flushes once per ring-buffer
//! drain: a person sees lines at once, a burst costs one `write`.
use std::io::{self, Write};

use jiff::Timestamp;

use crate::decode::Event;

pub mod json;
pub mod text;

/// Formats events onto a writer.
pub trait Output {
    /// Once, when tracing has started: column headings, or a `start` event.
    fn header(&mut self, time: Timestamp) -> io::Result<()>;
    fn event(&mut self, event: &Event) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// How events are printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub json: bool,
    /// Text: add SEQ and SEGS columns.
    pub sequence: bool,
    /// Text: endpoint columns wide enough for IPv6.
    pub wide_endpoints: bool,
}

/// The output the arguments ask for, over `writer`.
pub fn new<W: Write + 'static>(style: Style, writer: W) -> Box<dyn Output> {
    if style.json {
        Box::new(json::Json::new(writer))
    } else {
        Box::new(text::Text::new(writer, style))
    }
}
