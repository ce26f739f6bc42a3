//! Configuration problems, collected and reported together, and the small
//! parsers every config section shares.
//!
//! A [`ConfigReport`] gathers every [`Problem`] found while a configuration is
//! checked, each naming its key, so an operator fixes a broken file in one
//! pass. The policy ([`crate::policy`]), the log's settings and the proxy's
//! own sections all report into the same one.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// One problem, naming the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in one configuration, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigReport {
    /// The file (or other origin) the problems were found in.
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigReport {
    pub fn new(file: impl Into<String>) -> Self {
        ConfigReport {
            file: file.into(),
            problems: Vec::new(),
        }
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(value)` when no problem was recorded, the report otherwise.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ConfigReport> {
        match value {
            Some(value) if self.is_empty() => Ok(value),
            _ => Err(self),
        }
    }
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Small parsers shared by every section
// ---------------------------------------------------------------------------

pub fn parse_addr(text: &str, key: &str, r: &mut ConfigReport) -> Option<SocketAddr> {
    match text.trim().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.push(
                key,
                format!("`{text}` is not a socket address such as \"0.0.0.0:8443\""),
            );
            None
        }
    }
}

/// A CIDR network, or a bare address as a host route. IPv4-mapped IPv6
/// networks are canonicalised to IPv4.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<std::net::IpAddr>().ok()?),
    };
    Some(crate::origin::canonical_net(net.trunc()))
}

/// `"500ms"`, `"10s"`, `"2m"`, `"1h"`, `"30d"` (humantime's syntax, so
/// also `"1m 30s"`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("5w"), Some(Duration::from_secs(3_024_000)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn networks() {
        assert_eq!(parse_net("10.0.0.0/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_net("10.1.2.3/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_net("127.0.0.1"), "127.0.0.1/32".parse().ok());
        assert_eq!(parse_net("::ffff:10.0.0.0/104"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_net("10.0.0.0/33"), None);
        assert_eq!(parse_net("nope"), None);
    }
}
