//! IPv4 networks (`198.18.0.0/15`) and egress policies, as the operator and
//! the API write them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a network, rule or policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl Ipv4Cidr {
    /// The network `addr/prefix`; refused when `prefix > 32` or `addr` has
    /// host bits set (`10.0.0.1/8` is a typo more often than a wish).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, ParseError> {
        if prefix > 32 {
            return Err(ParseError(format!(
                "The prefix length of {addr}/{prefix} is over 32"
            )));
        }
        let c = Ipv4Cidr {
            network: addr,
            prefix,
        };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(ParseError(format!(
                "{addr}/{prefix} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & c.mask())
            )));
        }
        Ok(c)
    }

    /// The first address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// How many addresses it holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The `i`-th address (`None` past the end).
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + i as u32))
    }

    /// Whether `addr` is in it.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;

    /// `a.b.c.d/n`, or a bare address for `/32`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| ParseError(format!("{s:?} has no valid prefix length")))?,
            ),
            None => (s, 32),
        };
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| ParseError(format!("{s:?} is not an IPv4 network (a.b.c.d/n)")))?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One allowed destination of an allow-list: a network, and the TCP and
/// UDP ports allowed there (all when `ports` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    /// Where.
    pub network: Ipv4Cidr,
    /// Which ports, an inclusive range; `None`: every port and protocol.
    pub ports: Option<(u16, u16)>,
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            None => write!(f, "{}", self.network),
            Some((a, b)) if a == b => write!(f, "{}:{a}", self.network),
            Some((a, b)) => write!(f, "{}:{a}-{b}", self.network),
        }
    }
}

impl FromStr for EgressRule {
    type Err = ParseError;

    /// `NETWORK`, `NETWORK:PORT` or `NETWORK:FIRST-LAST`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (net, ports) = match s.split_once(':') {
            None => (s, None),
            Some((n, p)) => {
                let port = |t: &str| {
                    t.parse::<u16>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| ParseError(format!("{s:?}: {t:?} is not a port (1-65535)")))
                };
                let range = match p.split_once('-') {
                    None => (port(p)?, port(p)?),
                    Some((a, b)) => (port(a)?, port(b)?),
                };
                if range.0 > range.1 {
                    return Err(ParseError(format!("{s:?}: the port range is reversed")));
                }
                (n, Some(range))
            }
        };
        Ok(EgressRule {
            network: net.parse()?,
            ports,
        })
    }
}

/// Where a function's instances may open connections to.
///
/// Whatever the policy, an instance never reaches the host's own services
/// or another instance: those are refused before the policy is consulted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum EgressPolicy {
    /// Anywhere (Lambda without a VPC).
    #[default]
    AllowAll,
    /// Nowhere.
    DenyAll,
    /// Only to these destinations.
    AllowList(Vec<EgressRule>),
}

impl EgressPolicy {
    /// Most rules an allow-list may have.
    pub const MAX_RULES: usize = 64;

    /// The policy a list of rules written as text gives: `["all"]`,
    /// `["none"]`, or rules (see [`EgressRule`]'s `FromStr`), sorted and
    /// without duplicates so equal policies compare equal.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ParseError> {
        match items {
            [] => Ok(EgressPolicy::AllowAll),
            [one] if one.as_ref() == "all" => Ok(EgressPolicy::AllowAll),
            [one] if one.as_ref() == "none" => Ok(EgressPolicy::DenyAll),
            rules => {
                if rules.len() > Self::MAX_RULES {
                    return Err(ParseError(format!(
                        "An egress allow-list has at most {} rules",
                        Self::MAX_RULES
                    )));
                }
                let mut list = rules
                    .iter()
                    .map(|r| match r.as_ref() {
                        "all" | "none" => Err(ParseError(format!(
                            "{:?} cannot be combined with other egress rules",
                            r.as_ref()
                        ))),
                        r => r.parse::<EgressRule>(),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                list.sort();
                list.dedup();
                Ok(EgressPolicy::AllowList(list))
            }
        }
    }

    /// The policy as the text [`EgressPolicy::parse`] reads.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            EgressPolicy::AllowAll => vec!["all".into()],
            EgressPolicy::DenyAll => vec!["none".into()],
            EgressPolicy::AllowList(rules) => rules.iter().map(|r| r.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_print_and_contain() {
        let n: Ipv4Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!(n.to_string(), "198.18.0.0/15");
        assert!(n.contains("198.19.255.255".parse().unwrap()));
        assert!(!n.contains("198.20.0.0".parse().unwrap()));
        assert_eq!(n.size(), 1 << 17);
        assert_eq!(n.nth(2), Some("198.18.0.2".parse().unwrap()));
        assert_eq!(n.nth(1 << 17), None);
        let host: Ipv4Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(host.prefix(), 32);
        assert!(host.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!host.overlaps(&"11.0.0.0/8".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0/8", "x", "10.0.0.0/"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn policies_parse_into_one_canonical_form() {
        assert_eq!(
            EgressPolicy::parse::<&str>(&[]).unwrap(),
            EgressPolicy::AllowAll
        );
        assert_eq!(
            EgressPolicy::parse(&["none"]).unwrap(),
            EgressPolicy::DenyAll
        );
        let p = EgressPolicy::parse(&["198.18.0.0/15:5432", "10.0.0.0/8", "198.18.0.0/15:5432"])
            .unwrap();
        let q = EgressPolicy::parse(&["10.0.0.0/8", "198.18.0.0/15:5432"]).unwrap();
        assert_eq!(p, q);
        assert_eq!(p.to_strings(), vec!["10.0.0.0/8", "198.18.0.0/15:5432"]);
        let r = EgressPolicy::parse(&["198.18.0.1:8000-8100"]).unwrap();
        assert_eq!(r.to_strings(), vec!["198.18.0.1/32:8000-8100"]);
        for bad in [
            vec!["none", "10.0.0.0/8"],
            vec!["10.0.0.0/8:0"],
            vec!["10.0.0.0/8:9-1"],
            vec!["10.0.0.0/8:http"],
        ] {
            assert!(EgressPolicy::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
