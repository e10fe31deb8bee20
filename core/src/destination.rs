//! Which addresses webhooks may be sent to: `webhooks.allow_networks` and
//! `webhooks.deny_networks`, lists of CIDRs (or single addresses).
//!
//! The check is made on every address a host name resolves to, inside the
//! HTTP client's resolver, so the connection goes to an address that was
//! checked: a DNS answer cannot slip past it. Deny wins over allow; an
//! empty allow list allows every address. IPv4 addresses written as IPv6
//! (`::ffff:a.b.c.d`) are checked as IPv4.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// `a.b.c.d/n`, `::/n`, or a single address.
fn parse_list(list: &str, bad: &mut Vec<String>) -> Vec<IpNet> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => Some(net),
            Err(_) => {
                bad.push(s.to_string());
                None
            }
        })
        .collect()
}

impl NetPolicy {
    /// The policy of the two settings, and the entries that are not CIDRs
    /// (left out; the caller warns about them).
    pub fn from_settings(allow: &str, deny: &str) -> (NetPolicy, Vec<String>) {
        let mut bad = Vec::new();
        let policy = NetPolicy { allow: parse_list(allow, &mut bad), deny: parse_list(deny, &mut bad) };
        (policy, bad)
    }

    /// `Ok` when `ip` may be connected to; otherwise the rule that refuses it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Err(format!("destination {ip} is refused by webhooks.deny_networks ({net})"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err(format!("destination {ip} is not in webhooks.allow_networks"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_allow_everything() {
        let (p, bad) = NetPolicy::from_settings("", "");
        assert!(bad.is_empty());
        assert!(p.check(ip("169.254.169.254")).is_ok() && p.check(ip("::1")).is_ok());
    }

    #[test]
    fn deny_wins_and_names_the_rule() {
        let (p, bad) = NetPolicy::from_settings("10.0.0.0/8, 127.0.0.1", "169.254.169.254/32 10.9.0.0/16, fd00::/8");
        assert!(bad.is_empty());
        assert!(p.check(ip("10.1.2.3")).is_ok());
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert_eq!(
            p.check(ip("10.9.1.1")).unwrap_err(),
            "destination 10.9.1.1 is refused by webhooks.deny_networks (10.9.0.0/16)"
        );
        assert!(p.check(ip("169.254.169.254")).unwrap_err().contains("(169.254.169.254/32)"));
        assert!(p.check(ip("fd00::1")).unwrap_err().contains("fd00::/8"));
        assert_eq!(
            p.check(ip("192.168.1.1")).unwrap_err(),
            "destination 192.168.1.1 is not in webhooks.allow_networks"
        );
    }

    #[test]
    fn mapped_addresses_are_checked_as_ipv4() {
        let (p, _) = NetPolicy::from_settings("", "169.254.0.0/16");
        assert!(p.check(ip("::ffff:169.254.169.254")).unwrap_err().contains("169.254.169.254"));
    }

    #[test]
    fn bad_entries_are_reported() {
        let (p, bad) = NetPolicy::from_settings("nope", "10.0.0.0/33, 127.0.0.1/32");
        assert_eq!(bad, vec!["nope".to_string(), "10.0.0.0/33".to_string()]);
        assert!(p.check(ip("127.0.0.1")).is_err());
    }
}
