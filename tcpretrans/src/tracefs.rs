//! Tracepoint record layouts from tracefs `format` files.
//!
//! Field offsets differ across kernel versions (`state` arrived in 4.20,
//! `family` in 5.12, `err` in 6.17), so they are read from the running kernel
//! and handed to the kernel programs instead of being compiled in.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tcpretrans_common::{
    ABSENT, RECORD_LEN,
    hooks::{Hook, Layout},
    records::{RecordField, RecordLayout},
};
use thiserror::Error;

/// Where tracefs is usually mounted, newest convention first.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, Error)]
pub enum FormatError {
    #[error(
        "tracefs is not mounted, and mounting it at {path} failed ({source}): \
         mount it (`mount -t tracefs tracefs {path}`) and run again"
    )]
    Mount { path: String, source: nix::Error },
    #[error(
        "tracepoint {tracepoint} does not exist on this kernel ({path} is missing): \
         tcpretrans needs Linux 5.8 or later, built with CONFIG_FTRACE_SYSCALLS; \
         `tcpretrans --check` lists what this kernel offers"
    )]
    MissingTracepoint { tracepoint: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("tracepoint {tracepoint} has no `{field}` field on this kernel")]
    MissingField {
        tracepoint: String,
        field: &'static str,
    },
    #[error(
        "tracepoint {tracepoint} field `{field}` has an unexpected layout (offset {offset}, size {size})"
    )]
    BadField {
        tracepoint: String,
        field: &'static str,
        offset: u32,
        size: u32,
    },
    #[error("tracepoints {what} have different layouts on this kernel")]
    Differs { what: &'static str },
}

/// A tracefs instance: the directory holding `events/`.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is not mounted.
    pub fn find_or_mount() -> Result<Self, FormatError> {
        if let Some(root) = MOUNT_POINTS
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
        {
            return Ok(Self::at(root));
        }
        let target = MOUNT_POINTS[0];
        nix::mount::mount(
            Some("tracefs"),
            target,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| FormatError::Mount {
            path: target.to_owned(),
            source,
        })?;
        Ok(Self::at(Path::new(target)))
    }

    /// A tracefs-like tree at `root` (tests use fixture directories).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `format` file of `category:name`.
    /// The record layout of `hook`'s tracepoint.
    pub fn hook_format(&self, hook: &Hook) -> Result<Format, FormatError> {
        self.format(hook.category, hook.tracepoint)
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, FormatError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                FormatError::MissingTracepoint {
                    tracepoint: format!("{category}:{name}"),
                    path: path.clone(),
                }
            } else {
                FormatError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Ok(Format::parse(&format!("{category}:{name}"), &text))
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// A tracepoint's record layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the `format` file text. Lines that are not field declarations
    /// (name, ID, print fmt) are skipped.
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let fields = text.lines().filter_map(parse_field_line).collect();
        Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The record's layout as the programs read it: each field of `L`'s
    /// table found by [`Self::offset`].
    pub fn layout<L: RecordLayout>(&self) -> Result<L, FormatError> {
        L::from_offsets(&mut |field| self.offset(field))
    }

    /// Whether the record has `layout`.
    pub fn check(&self, layout: Layout) -> Result<(), FormatError> {
        layout.check(&mut |field| self.offset(field))
    }

    /// A field's offset: `ABSENT` for an optional field the kernel lacks. A
    /// present field must have the size the programs read, be naturally
    /// aligned (2 for byte arrays, which the kernel side reads as words) and
    /// lie within the bytes the kernel side copies.
    fn offset(&self, wanted: RecordField) -> Result<u16, FormatError> {
        let Some(field) = self.field(wanted.name) else {
            return if wanted.optional {
                Ok(ABSENT)
            } else {
                Err(FormatError::MissingField {
                    tracepoint: self.tracepoint.clone(),
                    field: wanted.name,
                })
            };
        };
        let align = if wanted.size == 16 { 2 } else { wanted.size };
        let fits = field.offset + field.size <= RECORD_LEN as u32;
        if field.size != wanted.size || field.offset % align != 0 || !fits {
            return Err(FormatError::BadField {
                tracepoint: self.tracepoint.clone(),
                field: wanted.name,
                offset: field.offset,
                size: field.size,
            });
        }
        Ok(field.offset as u16)
    }
}

/// `\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;`
fn parse_field_line(line: &str) -> Option<Field> {
    let mut parts = line.trim().split(';').map(str::trim);
    let declaration = parts.next()?.strip_prefix("field:")?;
    let name = declaration.rsplit([' ', '*']).next()?;
    let name = name.split('[').next()?.to_owned();
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some(Field {
        name,
        offset: offset?,
        size: size?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpretrans_common::{
        ConnectEnterFields, FlowFields, ResetRecordFields, RetransmitFields, StateFields,
        SynackFields, SyscallExitFields,
    };

    fn fixture(kernel: &str, event: &str) -> Format {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(kernel)
            .join("events")
            .join(event)
            .join("format");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Format::parse(event, &text)
    }

    #[test]
    fn parses_field_lines() {
        let f = parse_field_line("\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;")
            .unwrap();
        assert_eq!(
            f,
            Field {
                name: "skaddr".into(),
                offset: 16,
                size: 8
            }
        );
        let f = parse_field_line("\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;")
            .unwrap();
        assert_eq!(
            f,
            Field {
                name: "saddr_v6".into(),
                offset: 42,
                size: 16
            }
        );
        assert!(parse_field_line("print fmt: \"skbaddr=%p\"").is_none());
        assert!(parse_field_line("ID: 2281").is_none());
    }

    #[test]
    fn retransmit_layout_6_18_has_state_family_err() {
        let f = fixture("6.18", "tcp/tcp_retransmit_skb")
            .layout::<RetransmitFields>()
            .unwrap();
        assert_eq!(
            (
                f.flow.skaddr,
                f.state,
                f.flow.sport,
                f.flow.dport,
                f.flow.family
            ),
            (16, 24, 28, 30, 32)
        );
        assert_eq!((f.flow.saddr_v6, f.flow.daddr_v6, f.err), (42, 58, 76));
        assert_eq!(f.skbaddr, 8);
    }

    #[test]
    fn retransmit_layout_6_1_has_no_err() {
        let f = fixture("6.1", "tcp/tcp_retransmit_skb")
            .layout::<RetransmitFields>()
            .unwrap();
        assert_eq!((f.state, f.flow.family, f.err), (24, 32, ABSENT));
        assert_eq!((f.flow.saddr_v6, f.flow.daddr_v6), (42, 58));
    }

    #[test]
    fn retransmit_layout_5_10_has_no_family() {
        let f = fixture("5.10", "tcp/tcp_retransmit_skb")
            .layout::<RetransmitFields>()
            .unwrap();
        assert_eq!((f.state, f.flow.family, f.err), (24, ABSENT, ABSENT));
        assert_eq!(
            (f.flow.sport, f.flow.saddr_v6, f.flow.daddr_v6),
            (28, 40, 56)
        );
    }

    #[test]
    fn retransmit_layout_4_19_has_no_state() {
        let f = fixture("4.19", "tcp/tcp_retransmit_skb")
            .layout::<RetransmitFields>()
            .unwrap();
        assert_eq!((f.state, f.flow.family, f.err), (ABSENT, ABSENT, ABSENT));
        assert_eq!(
            (f.flow.sport, f.flow.dport, f.flow.saddr_v6, f.flow.daddr_v6),
            (24, 26, 36, 52)
        );
    }

    #[test]
    fn synack_layout_6_18() {
        let f = fixture("6.18", "tcp/tcp_retransmit_synack")
            .layout::<SynackFields>()
            .unwrap();
        assert_eq!(
            (f.flow.skaddr, f.req, f.flow.sport, f.flow.family),
            (8, 16, 24, 28)
        );
        assert_eq!((f.flow.saddr_v6, f.flow.daddr_v6), (38, 54));
    }

    #[test]
    fn reset_layouts_6_18() {
        assert_eq!(
            fixture("6.18", "tcp/tcp_send_reset")
                .layout::<ResetRecordFields>()
                .unwrap()
                .skaddr,
            16
        );
        assert_eq!(
            fixture("6.18", "tcp/tcp_receive_reset")
                .layout::<ResetRecordFields>()
                .unwrap()
                .skaddr,
            8
        );
    }

    #[test]
    fn connect_syscall_layouts_6_18() {
        let enter = fixture("6.18", "syscalls/sys_enter_connect")
            .layout::<ConnectEnterFields>()
            .unwrap();
        assert_eq!((enter.fd, enter.uservaddr), (16, 24));
        let exit = fixture("6.18", "syscalls/sys_exit_connect");
        assert_eq!(exit.layout::<SyscallExitFields>().unwrap().ret, 16);
        assert_eq!(exit.check(Layout::SyscallExit).ok(), Some(()));
        assert!(matches!(
            exit.check(Layout::ConnectEnter),
            Err(FormatError::MissingField { field: "fd", .. })
        ));
    }

    #[test]
    fn state_layouts() {
        for kernel in ["6.18", "6.1", "5.10", "4.19"] {
            let f = fixture(kernel, "sock/inet_sock_set_state")
                .layout::<StateFields>()
                .unwrap();
            assert_eq!(
                (f.flow.skaddr, f.oldstate, f.newstate),
                (8, 16, 20),
                "{kernel}"
            );
            assert_eq!(
                (f.flow.family, f.protocol, f.flow.saddr_v6),
                (28, 30, 40),
                "{kernel}"
            );
        }
    }

    #[test]
    fn missing_required_field_is_an_error() {
        let format = Format::parse(
            "tcp:x",
            "\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n",
        );
        let err = format.layout::<RetransmitFields>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "tracepoint tcp:x has no `skaddr` field on this kernel"
        );
    }

    #[test]
    fn misaligned_or_out_of_range_field_is_an_error() {
        let text = "\tfield:const void * skaddr;\toffset:12;\tsize:8;\tsigned:0;\n";
        assert!(matches!(
            Format::parse("t", text).layout::<FlowFields>(),
            Err(FormatError::BadField { .. })
        ));
        let text = "\tfield:const void * skaddr;\toffset:128;\tsize:8;\tsigned:0;\n";
        assert!(matches!(
            Format::parse("t", text).layout::<FlowFields>(),
            Err(FormatError::BadField { .. })
        ));
    }

    #[test]
    fn missing_tracepoint_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tracefs::at(dir.path())
            .format("tcp", "tcp_retransmit_skb")
            .unwrap_err();
        assert!(matches!(err, FormatError::MissingTracepoint { .. }));
        assert!(
            err.to_string()
                .starts_with("tracepoint tcp:tcp_retransmit_skb does not exist")
        );
    }
}
