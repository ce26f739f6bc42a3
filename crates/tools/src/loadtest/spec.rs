//! The small languages of the `loadtest` command line: the origin mix
//! (`ch=40,eu=40,us=20`), origin addresses (`ch=192.0.2.10`), chaos events
//! (`20s:zurich=refuse`, `45s:drain=geneva`) and durations (`500ms`, `60s`).
//!
//! Every parser returns a message that names what was wrong and shows the
//! expected shape, so clap can print it as is.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// One jurisdiction of the origin mix and its relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MixEntry {
    pub jurisdiction: String,
    pub weight: u32,
}

/// `--mix ch=40,eu=40,us=20`: weights by jurisdiction name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub Vec<MixEntry>);

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut entries: Vec<MixEntry> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: expected JURISDICTION=WEIGHT, e.g. ch=40,eu=40,us=20")
            })?;
            let name = jurisdiction_name(name.trim(), part)?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("`{part}`: the weight must be a non-negative integer, e.g. ch=40")
            })?;
            if entries.iter().any(|e| e.jurisdiction == name) {
                return Err(format!("jurisdiction `{name}` appears twice in the mix"));
            }
            entries.push(MixEntry {
                jurisdiction: name,
                weight,
            });
        }
        if entries.is_empty() {
            return Err("the mix is empty: expected e.g. ch=40,eu=40,us=20".into());
        }
        if entries.iter().all(|e| e.weight == 0) {
            return Err("every weight in the mix is 0".into());
        }
        Ok(Mix(entries))
    }
}

/// `--origin ch=192.0.2.10`: a client address used for a jurisdiction's uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSpec {
    pub jurisdiction: String,
    pub address: IpAddr,
}

impl FromStr for OriginSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<OriginSpec, String> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected JURISDICTION=ADDRESS, e.g. ch=192.0.2.10"))?;
        let jurisdiction = jurisdiction_name(name.trim(), s)?;
        let address: IpAddr = addr
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{s}`: `{}` is not an IPv4 or IPv6 address", addr.trim()))?;
        Ok(OriginSpec {
            jurisdiction,
            address: address.to_canonical(),
        })
    }
}

/// How each origin's address reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convey {
    /// `X-Forwarded-For: ADDR` (the proxy must trust the load generator).
    Xff,
    /// A PROXY v2 header opening every connection, one pool per address.
    ProxyV2,
}

impl fmt::Display for Convey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Convey::Xff => "xff",
            Convey::ProxyV2 => "proxy-v2",
        })
    }
}

/// The behaviour a sink data centre can be switched to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatacenterMode {
    Normal,
    Refuse,
    Hang,
    Slow,
    Error,
}

impl DatacenterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DatacenterMode::Normal => "normal",
            DatacenterMode::Refuse => "refuse",
            DatacenterMode::Hang => "hang",
            DatacenterMode::Slow => "slow",
            DatacenterMode::Error => "error",
        }
    }
}

impl FromStr for DatacenterMode {
    type Err = String;

    fn from_str(s: &str) -> Result<DatacenterMode, String> {
        Ok(match s {
            "normal" => DatacenterMode::Normal,
            "refuse" => DatacenterMode::Refuse,
            "hang" => DatacenterMode::Hang,
            "slow" => DatacenterMode::Slow,
            "error" => DatacenterMode::Error,
            other => {
                return Err(format!(
                    "unknown mode `{other}`: expected normal, refuse, hang, slow or error"
                ))
            }
        })
    }
}

/// What a chaos event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChaosAction {
    /// Switch a sink data centre's behaviour (sink admin API).
    Mode {
        datacenter: String,
        mode: DatacenterMode,
    },
    /// Take a data centre out of the proxy's rotation (proxy admin API).
    Drain { datacenter: String },
    /// Put a drained data centre back.
    Undrain { datacenter: String },
}

impl ChaosAction {
    pub fn datacenter(&self) -> &str {
        match self {
            ChaosAction::Mode { datacenter, .. }
            | ChaosAction::Drain { datacenter }
            | ChaosAction::Undrain { datacenter } => datacenter,
        }
    }

    /// Does this event put the data centre at fault: break it (below), or
    /// slow it down — which may break it as the proxy sees it (an answer,
    /// or a health check, slower than its timeouts ejects it) or not? Its
    /// span, until the repair, is what `min_availability` is measured
    /// over.
    pub fn faults(&self) -> bool {
        self.breaks()
            || matches!(
                self,
                ChaosAction::Mode {
                    mode: DatacenterMode::Slow,
                    ..
                }
            )
    }

    /// Does this event stop the data centre from storing uploads (so that
    /// its traffic must fail over)? `slow` degrades; whether the proxy
    /// then keeps it or fails over is its timeouts' call.
    pub fn breaks(&self) -> bool {
        matches!(
            self,
            ChaosAction::Drain { .. }
                | ChaosAction::Mode {
                    mode: DatacenterMode::Refuse | DatacenterMode::Hang | DatacenterMode::Error,
                    ..
                }
        )
    }
}

/// `--chaos 20s:zurich=refuse`, `--chaos 45s:drain=geneva`: an action at an
/// offset from the start of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosEvent {
    pub at: Duration,
    pub action: ChaosAction,
}

impl FromStr for ChaosEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<ChaosEvent, String> {
        const SHAPE: &str = "expected TIME:DATACENTER=MODE (modes: normal, refuse, hang, slow, error), TIME:drain=DATACENTER or TIME:undrain=DATACENTER, e.g. 20s:zurich=refuse";
        let (at, what) = s.split_once(':').ok_or_else(|| format!("`{s}`: {SHAPE}"))?;
        let at = parse_duration(at.trim()).map_err(|e| format!("`{s}`: {e}"))?;
        let (left, right) = what
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: {SHAPE}"))?;
        let (left, right) = (left.trim(), right.trim());
        let action = match left {
            "drain" => ChaosAction::Drain {
                datacenter: datacenter_name(right, s)?,
            },
            "undrain" => ChaosAction::Undrain {
                datacenter: datacenter_name(right, s)?,
            },
            _ => ChaosAction::Mode {
                datacenter: datacenter_name(left, s)?,
                mode: right.parse().map_err(|e| format!("`{s}`: {e}"))?,
            },
        };
        Ok(ChaosEvent { at, action })
    }
}

impl fmt::Display for ChaosEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", format_duration(self.at), self.action)
    }
}

impl fmt::Display for ChaosAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChaosAction::Mode { datacenter, mode } => write!(f, "{datacenter}={}", mode.as_str()),
            ChaosAction::Drain { datacenter } => write!(f, "drain={datacenter}"),
            ChaosAction::Undrain { datacenter } => write!(f, "undrain={datacenter}"),
        }
    }
}

/// `500ms`, `20s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    residency_core::report::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration: expected e.g. 500ms, 20s, 2m or 1h"))
}

/// Whole seconds as `20s`, anything else as milliseconds.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn jurisdiction_name(name: &str, whole: &str) -> Result<String, String> {
    if valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{whole}`: `{name}` is not a jurisdiction name (lower-case letters, digits, '-', '_')"
        ))
    }
}

fn datacenter_name(name: &str, whole: &str) -> Result<String, String> {
    if valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{whole}`: `{name}` is not a data centre name (lower-case letters, digits, '-', '_')"
        ))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
