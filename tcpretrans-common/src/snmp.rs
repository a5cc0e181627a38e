//! The kernel's own counters as `/proc/net/snmp` prints them: what the
//! tool's self-check and the matrix hold the programs' counts against.

/// A counter of `/proc/net/snmp`, whose groups are a line of names and a
/// line of values: `Tcp: ... RetransSegs ...`, `Tcp: ... 2593 ...`.
pub fn counter(snmp: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| {
        l.strip_prefix(group)
            .is_some_and(|rest| rest.starts_with(':'))
    });
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_of_its_group() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin MaxConn RetransSegs InErrs\n\
                    Tcp: 1 200 -1 2593 0\n\
                    TcpExt: RetransSegs\nTcpExt: 7\n\
                    Udp: InDatagrams\nUdp: 12\n";
        assert_eq!(counter(snmp, "Tcp", "RetransSegs"), Some(2593));
        assert_eq!(counter(snmp, "Udp", "InDatagrams"), Some(12));
        assert_eq!(counter(snmp, "Tcp", "MaxConn"), None, "signed");
        assert_eq!(counter(snmp, "Tcp", "OutRsts"), None);
        assert_eq!(counter(snmp, "Icmp", "InMsgs"), None);
    }
}
