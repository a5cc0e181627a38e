//! The static tracer where there is no libc at all: a guest whose root is
//! its initramfs (static busybox and the kernel's modules), with the host's
//! root not shared. The tracer runs `--check`, then `--state --json` while
//! busybox makes connections on loopback, unanswered SYNs, and a connection
//! whose peer's address is routed for a while into a device that drops what
//! it sends; what it printed is held against the kernel's `RetransSegs` and
//! busybox `netstat`'s TIME_WAIT sockets.
use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    guest::{self, Root},
    kernel::{EXTRA_MODULES, Kernel},
    report::Check,
};

/// Boot, check and a few seconds of traffic take well under a minute.
const TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The loopback server's port, the unanswered connection's remote port, and
/// the port of the connection whose peer goes unreachable.
const HTTP_PORT: u16 = 8080;
const DROPPED_PORT: u16 = 9;
const OUTAGE_PORT: u16 = 7000;

/// How long that connection's peer is unreachable.
const OUTAGE_SECONDS: u32 = 3;

/// Busybox's `wget` requests from its `httpd`.
const REQUESTS: usize = 5;

/// What the tracer did in a guest without libc.
pub struct Outcome {
    pub release: String,
    /// From qemu's start to the guest's power-off.
    pub wall: Duration,
    /// Files in the guest's root, none of them a libc or a dynamic loader.
    pub files: usize,
    /// What `--check` said.
    pub check: Check,
    /// SYN retransmissions the tracer printed.
    pub syn_retransmits: usize,
    /// Retransmissions of the connection whose peer went unreachable, by
    /// type.
    pub outage: BTreeMap<String, usize>,
    /// Segments the tracer printed as sent, and the kernel's count.
    pub segments: (u64, u64),
    /// TIME_WAIT entries the tracer printed, and `netstat`'s TIME_WAIT sockets.
    pub time_wait: (usize, usize),
    /// What did not hold, one sentence each.
    pub problems: Vec<String>,
}

pub fn run(kernel: &Kernel, run: &Path, tracer: &Path) -> Result<Outcome> {
    if run.exists() {
        fs::remove_dir_all(run).with_context(|| format!("removing {}", run.display()))?;
    }
    fs::create_dir_all(run)?;
    fs::copy(tracer, run.join("tcpretrans")).context("copying the static tracer")?;
    fs::write(run.join("guest.sh"), script())?;
    let started = Instant::now();
    let finished = guest::qemu(kernel, Root::Initramfs, run, TIMEOUT)?;
    let wall = started.elapsed();
    let read = |name: &str| fs::read_to_string(run.join(name)).unwrap_or_default();

    let mut problems = Vec::new();
    if !finished {
        problems.push(format!(
            "the guest was stopped after {} s",
            TIMEOUT.as_secs()
        ));
    }
    let files = read("files.txt");
    let libc: Vec<&str> = files.lines().filter(|f| is_libc(f)).collect();
    if !libc.is_empty() {
        problems.push(format!("the guest's root has {}", libc.join(", ")));
    }
    for (step, status, output) in [
        ("--check", "check.rc", "check.txt"),
        ("--state --json", "tracer.rc", "tracer.err"),
    ] {
        let status = read(status);
        if status.trim() != "0" {
            problems.push(format!(
                "tcpretrans {step} exited with {:?}: {}",
                status.trim(),
                read(output).trim()
            ));
        }
    }

    let events: Vec<Value> = read("events.json")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let port_is = |e: &Value, key: &str, port: u16| e[key].as_u64() == Some(port.into());
    let retransmits = events.iter().filter(|e| e["event"] == "retransmit");
    let sent = retransmits
        .clone()
        .filter(|e| e["err"].as_i64().unwrap_or(0) == 0)
        .map(|e| e["segs"].as_u64().unwrap_or(1))
        .sum();
    let syn_retransmits = retransmits
        .clone()
        .filter(|e| e["type"] == "SYN" && port_is(e, "rport", DROPPED_PORT))
        .count();
    let mut outage = BTreeMap::new();
    for retransmit in retransmits.filter(|e| port_is(e, "rport", OUTAGE_PORT)) {
        let cause = retransmit["type"].as_str().unwrap_or("unknown");
        *outage.entry(cause.to_owned()).or_default() += 1;
    }
    let kernel_segments =
        retrans_segs(&read("snmp.after"))?.saturating_sub(retrans_segs(&read("snmp.before"))?);
    if syn_retransmits == 0 {
        problems.push("the tracer printed no SYN retransmission".into());
    }
    if !outage.contains_key("RTO") {
        problems.push(format!(
            "the tracer printed no RTO retransmission of the connection whose peer was \
             unreachable for {OUTAGE_SECONDS} s (it printed {outage:?})"
        ));
    }
    if sent != kernel_segments {
        problems.push(format!(
            "the tracer printed {sent} segments sent again, the kernel counted {kernel_segments}"
        ));
    }
    let on_http = |e: &&Value| port_is(e, "lport", HTTP_PORT) || port_is(e, "rport", HTTP_PORT);
    let traced_time_wait = events
        .iter()
        .filter(on_http)
        .filter(|e| e["event"] == "state" && e["new_state"] == "TIME_WAIT")
        .count();
    let netstat_time_wait = read("netstat.txt")
        .lines()
        .filter(|l| l.contains("TIME_WAIT") && l.contains(&format!(":{HTTP_PORT} ")))
        .count();
    if traced_time_wait != netstat_time_wait || traced_time_wait < REQUESTS {
        problems.push(format!(
            "{REQUESTS} requests: the tracer printed {traced_time_wait} TIME_WAIT entries, \
             netstat showed {netstat_time_wait} TIME_WAIT sockets"
        ));
    }
    Ok(Outcome {
        release: kernel.release.clone(),
        wall,
        files: files.lines().count(),
        check: Check::parse(&read("check.txt")),
        syn_retransmits,
        outage,
        segments: (sent, kernel_segments),
        time_wait: (traced_time_wait, netstat_time_wait),
        problems,
    })
}

/// Whether a path names a C library or a dynamic loader (glibc's or musl's).
fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || name.starts_with("ld-musl") || name.starts_with("libc.")
}

/// `Tcp: RetransSegs` of a copy of /proc/net/snmp the guest left.
fn retrans_segs(snmp: &str) -> Result<u64> {
    tcpretrans_common::snmp::counter(snmp, "Tcp", "RetransSegs")
        .context("the guest left no Tcp: RetransSegs of /proc/net/snmp")
}

/// The guest's work in busybox sh, run in the run directory.
fn script() -> String {
    let [dummy] = EXTRA_MODULES;
    format!(
        r#"mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
find / -xdev > files.txt
./tcpretrans --check > check.txt 2>&1
echo $? > check.rc
ip link set lo up
insmod /modules/extra/{dummy}.ko
ip link show dummy0 > /dev/null 2>&1 || ip link add dummy0 type dummy
ip link set dummy0 up
ip addr add 10.99.0.1/24 dev dummy0
mkdir -p /www && echo tcpretrans > /www/index.html
httpd -p 127.0.0.1:{HTTP_PORT} -h /www
./tcpretrans --state --json > events.json 2> tracer.err &
tracer=$!
i=0
while [ ! -s events.json ] && [ $i -lt 300 ]; do usleep 100000; i=$((i + 1)); done
grep '^Tcp:' /proc/net/snmp > snmp.before
for i in $(seq {REQUESTS}); do wget -q -O /dev/null http://127.0.0.1:{HTTP_PORT}/index.html; done
netstat -tan > netstat.txt
# Nothing answers 10.99.0.3: the prefix's route leads into the dummy device.
timeout 5 nc 10.99.0.3 {DROPPED_PORT} < /dev/null
# A connection from 10.99.0.1 to 10.99.0.2, delivered locally by a route of
# its own. That route is withdrawn before the client writes, so the prefix's
# route takes what it sends into the dummy device until the route is back:
# its data is in flight whatever the receiver's pace. The server's input is
# a FIFO held open without a word written, so it neither sends nor closes.
ip route add local 10.99.0.2/32 dev lo src 10.99.0.1 table local
mkfifo /quiet
nc -l -p {OUTAGE_PORT} < /quiet > /dev/null &
server=$!
exec 3> /quiet
i=0
while ! netstat -ltn | grep -q ':{OUTAGE_PORT} ' && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
{{ sleep 1; echo tcpretrans; sleep 9; }} | nc 10.99.0.2 {OUTAGE_PORT} &
client=$!
usleep 300000
ip route del local 10.99.0.2/32 dev lo table local
sleep {OUTAGE_SECONDS}
ip route add local 10.99.0.2/32 dev lo src 10.99.0.1 table local
sleep 2
kill $client $server
wait $server
exec 3>&-
grep '^Tcp:' /proc/net/snmp > snmp.after
kill -INT $tracer
wait $tracer
echo $? > tracer.rc
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaders_and_libcs_are_told_from_other_files() {
        for libc in [
            "/lib/ld-musl-x86_64.so.1",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(is_libc(libc), "{libc}");
        }
        for other in ["/bin/busybox", "/modules/00-virtio_pci.ko", "/bin/libcheck"] {
            assert!(!is_libc(other), "{other}");
        }
    }
}
