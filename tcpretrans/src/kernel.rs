//! Facts about the running kernel that are not in BTF: its tick rate (HZ,
//! to turn `icsk_rto` jiffies into time) and the TCP sysctls that govern
//! retransmission and connection lifetime.
use std::{
    fs,
    io::{self, BufRead, BufReader},
    path::Path,
    thread,
    time::Duration,
};

use flate2::read::GzDecoder;
use thiserror::Error;

/// HZ values kernels are built with (x86 offers the first four).
const KNOWN_HZ: [u32; 8] = [100, 250, 300, 1000, 24, 32, 128, 1024];

#[derive(Debug, Error)]
#[error(
    "cannot tell this kernel's HZ (no CONFIG_HZ in /proc/config.gz or /boot/config-*, \
     and /proc/timer_list is unreadable): RTOs are shown as unknown"
)]
pub struct UnknownHz;

/// The kernel's HZ: from its build configuration, or else from its jiffies.
pub fn hz() -> Result<u32, UnknownHz> {
    hz_from_config().or_else(hz_from_jiffies).ok_or(UnknownHz)
}

fn hz_from_config() -> Option<u32> {
    match fs::File::open("/proc/config.gz") {
        // Read up to the line: it comes early, and the rest is most of
        // the decompression.
        Ok(file) => config_hz(
            BufReader::new(GzDecoder::new(file))
                .lines()
                .map_while(Result::ok),
        ),
        Err(_) => {
            let release = nix::sys::utsname::uname()
                .ok()?
                .release()
                .to_string_lossy()
                .into_owned();
            let text =
                fs::read_to_string(Path::new("/boot").join(format!("config-{release}"))).ok()?;
            config_hz(text.lines())
        }
    }
}

fn config_hz<L: AsRef<str>>(mut config: impl Iterator<Item = L>) -> Option<u32> {
    config.find_map(|l| {
        l.as_ref()
            .strip_prefix("CONFIG_HZ=")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// How long jiffies are counted when one reading cannot tell HZ: long
/// enough that a tick more or less cannot turn 250 into 300, or 1000 into 1024.
const TICK_COUNTING: Duration = Duration::from_millis(250);

/// From /proc/timer_list (containers rarely see the build configuration):
/// one reading since boot, or, where that cannot tell, the ticks counted
/// over [`TICK_COUNTING`].
fn hz_from_jiffies() -> Option<u32> {
    let read = || JiffiesAt::parse(&fs::read_to_string("/proc/timer_list").ok()?);
    let first = read()?;
    first.hz_since_boot().or_else(|| {
        thread::sleep(TICK_COUNTING);
        first.hz_until(read()?)
    })
}

/// The jiffies counter and the monotonic clock, read together.
#[derive(Debug, Clone, Copy)]
struct JiffiesAt {
    /// Seconds since boot.
    uptime: f64,
    jiffies: f64,
}

impl JiffiesAt {
    fn parse(timer_list: &str) -> Option<Self> {
        let now_ns: f64 = timer_list
            .lines()
            .find_map(|l| l.strip_prefix("now at "))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let jiffies = timer_list
            .lines()
            .find_map(|l| l.trim().strip_prefix("jiffies: "))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            uptime: now_ns / 1e9,
            jiffies,
        })
    }

    /// Jiffies start at `2^32 - 300 * HZ` (to catch wrap bugs early), so one
    /// reading gives HZ — rounded to a known value, and only once the uptime
    /// is far enough from the 300 s where the formula degenerates.
    fn hz_since_boot(self) -> Option<u32> {
        if (self.uptime - 300.0).abs() < 30.0 {
            return None;
        }
        let estimate = (self.jiffies - 4_294_967_296.0) / (self.uptime - 300.0);
        KNOWN_HZ
            .into_iter()
            .find(|&hz| (estimate - f64::from(hz)).abs() < f64::from(hz) * 0.02)
    }

    /// The known HZ whose ticks over the time from `self` to `later` are
    /// within a tick and a half of those counted, if exactly one is.
    fn hz_until(self, later: Self) -> Option<u32> {
        let elapsed = later.uptime - self.uptime;
        let ticks = later.jiffies - self.jiffies;
        let mut fitting = KNOWN_HZ
            .into_iter()
            .filter(|&hz| (f64::from(hz) * elapsed - ticks).abs() <= 1.5);
        match (fitting.next(), fitting.next()) {
            (Some(hz), None) if elapsed > 0.0 => Some(hz),
            _ => None,
        }
    }
}

/// The TCP sysctls an on-call engineer needs next to retransmissions, in
/// the order `--check` prints them.
pub const TCP_SYSCTLS: [&str; 11] = [
    "net.ipv4.tcp_retries1",
    "net.ipv4.tcp_retries2",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_rto_min_us",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_fin_timeout",
];

/// The caller's privileges for loading and attaching tracing programs.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    pub euid: u32,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
}

impl Privileges {
    pub fn current() -> Self {
        const CAP_SYS_ADMIN: u32 = 21;
        const CAP_PERFMON: u32 = 38;
        const CAP_BPF: u32 = 39;
        let effective = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s
                    .lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))?
                    .trim()
                    .to_owned();
                u64::from_str_radix(&hex, 16).ok()
            })
            .unwrap_or(0);
        let has = |cap: u32| effective >> cap & 1 == 1;
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            cap_bpf: has(CAP_BPF),
            cap_perfmon: has(CAP_PERFMON),
            cap_sys_admin: has(CAP_SYS_ADMIN),
        }
    }

    /// CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON: what the kernel checks
    /// to load and attach tracing programs. Never the uid: root in a
    /// container whose capabilities were dropped is refused all the same.
    pub fn suffice(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }
}

/// A sysctl of the caller's network namespace; `Ok(None)` when this kernel
/// does not have it.
pub fn sysctl(name: &str) -> io::Result<Option<String>> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    match fs::read_to_string(path) {
        Ok(v) => Ok(Some(v.split_whitespace().collect::<Vec<_>>().join(" "))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_hz() {
        assert_eq!(
            config_hz("CONFIG_X=y\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n".lines()),
            Some(250)
        );
        assert_eq!(config_hz("CONFIG_HZ_1000=y\n".lines()), None);
    }

    #[test]
    fn derives_hz_from_jiffies_and_uptime() {
        let since_boot = |text: &str| JiffiesAt::parse(text).and_then(JiffiesAt::hz_since_boot);
        // Read off this project's machine: HZ=250, 1580 s after boot.
        let text = "Timer List Version: v0.10\nnow at 1580473159824 nsecs\n  .last_jiffies   : 4295286990\njiffies: 4295287389\n";
        assert_eq!(since_boot(text), Some(250));
        // HZ=1000, one hour up: jiffies = 2^32 - 300_000 + 3_600_000.
        assert_eq!(
            since_boot("now at 3600000000000 nsecs\njiffies: 4298267296\n"),
            Some(1000)
        );
        // Too close to 300 s to tell.
        assert_eq!(
            since_boot("now at 310000000000 nsecs\njiffies: 4294969796\n"),
            None
        );
        assert_eq!(since_boot("jiffies: 4294969796\n"), None);
    }

    #[test]
    fn counts_ticks_where_one_reading_cannot_tell() {
        // 310 s after boot, where `hz_since_boot` gives up.
        let at = |uptime, jiffies| JiffiesAt { uptime, jiffies };
        let start = at(310.0, 4_294_969_796.0);
        let counted = |hz: f64, elapsed: f64, extra: f64| {
            start.hz_until(at(310.0 + elapsed, start.jiffies + hz * elapsed + extra))
        };
        for hz in [100, 250, 300, 1000, 1024] {
            for extra in [-1.0, 0.0, 1.0] {
                assert_eq!(
                    counted(f64::from(hz), 0.25, extra),
                    Some(hz),
                    "{hz} {extra}"
                );
            }
        }
        // 24 and 32 are a tick and a half apart over 0.25 s: neither is claimed.
        assert_eq!(counted(24.0, 0.25, 1.0), None);
        // A clock that did not move, or ticks no HZ makes.
        assert_eq!(counted(250.0, 0.0, 0.0), None);
        assert_eq!(counted(500.0, 0.25, 0.0), None);
    }

    #[test]
    fn capabilities_suffice_and_the_uid_does_not() {
        let privileges = |cap_bpf, cap_perfmon, cap_sys_admin| Privileges {
            euid: 0,
            cap_bpf,
            cap_perfmon,
            cap_sys_admin,
        };
        // Root with none of them (a container that dropped them), or half the pair.
        assert!(!privileges(false, false, false).suffice());
        assert!(!privileges(true, false, false).suffice());
        assert!(!privileges(false, true, false).suffice());
        assert!(privileges(true, true, false).suffice());
        assert!(privileges(false, false, true).suffice());
        let user_given_them = Privileges {
            euid: 1000,
            ..privileges(true, true, false)
        };
        assert!(user_given_them.suffice());
    }

    #[test]
    fn running_kernel_hz_is_known() {
        let hz = hz().expect("HZ of the running kernel");
        assert!(KNOWN_HZ.contains(&hz), "{hz}");
    }
}
