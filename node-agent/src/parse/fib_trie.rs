//! `/proc/net/fib_trie`: the node's own IPv4 addresses, without `ip` or netlink.
//!
//! Each address the kernel owns is a leaf (`|-- 192.0.2.2`) followed by a `/32 host LOCAL` line.
//! The file lists the Main and the Local table; both may show the same leaf.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parsing fib_trie line {line}: {text:?} is not an IPv4 address")]
pub struct FibTrieError {
    pub line: usize,
    pub text: String,
}

/// Local addresses outside 127.0.0.0/8, in file order, each once.
pub fn parse(text: &str) -> Result<Vec<Ipv4Addr>, FibTrieError> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            leaf = Some(addr.trim().parse().map_err(|_| FibTrieError {
                line: i + 1,
                text: addr.trim().to_string(),
            })?);
        } else if t.starts_with("+-- ") || t.ends_with(':') {
            // An inner node or a table header ends the current leaf.
            leaf = None;
        } else if t.split_whitespace().eq(["/32", "host", "LOCAL"])
            && let Some(addr) = leaf.filter(|a| !a.is_loopback() && !out.contains(a))
        {
            out.push(addr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_trie_has_one_local_address() {
        let addrs = parse(include_str!("../../tests/fixtures/fib_trie.txt")).unwrap();
        assert_eq!(addrs, vec![Ipv4Addr::new(192, 0, 2, 2)]);
    }

    #[test]
    fn several_addresses_and_broadcasts() {
        let text = "\
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.1.0.5
        /32 host LOCAL
     |-- 10.1.0.255
        /32 link BROADCAST
     |-- 172.16.0.9
        /16 link UNICAST
        /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
";
        assert_eq!(
            parse(text).unwrap(),
            vec![Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(172, 16, 0, 9)]
        );
    }

    #[test]
    fn a_bad_leaf_is_an_error() {
        let err = parse("Main:\n  |-- 10.0.0.300\n").unwrap_err();
        assert_eq!(
            err,
            FibTrieError {
                line: 2,
                text: "10.0.0.300".into()
            }
        );
    }
}
