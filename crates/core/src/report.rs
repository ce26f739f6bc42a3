//! Configuration problems, collected and reported together, and the small
//! parsers every config section shares.
//!
//! A [`ConfigReport`] gathers every [`Problem`] found while a configuration is
//! checked, each naming its key, so an operator fixes a broken file in one
//! pass. The policy ([`crate::policy`]), the log's settings and the proxy's
//! own sections all report into the same one.
//!
//! Typed values (numbers, durations, enumerations) are deserialized as a
//! [`Setting`]: it never fails deserialization, so one bad value does not hide
//! the others; the validation pass calls [`Setting::check`] (or
//! [`OptionalSetting::check_or`]), which reports a bad value under its key.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    /// Files the configuration names (those it could not read too), so a
    /// reload that failed is tried again when one of them changes.
    pub named: Vec<std::path::PathBuf>,
    /// Said after the problems: what may explain those no key names alone
    /// (environment overrides that a problem on another key may come from).
    pub notes: Vec<String>,
}

impl ConfigReport {
    pub fn new(file: impl Into<String>) -> Self {
        ConfigReport {
            file: file.into(),
            problems: Vec::new(),
            named: Vec::new(),
            notes: Vec::new(),
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

/// What is wrong with `path` as a file to read, when it is there but is
/// not a regular file (a directory, `/dev/null`): said as such, where a
/// reader's "no such file" or "not found" would send a person looking for
/// a file that is there (config audit, stop 63). `None` for a regular
/// file, or one that is not there (the caller's own words).
pub fn not_a_file(path: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        Some(format!(
            "{} is a directory: give the file in it",
            path.display()
        ))
    } else if !meta.is_file() {
        Some(format!("{} is not a regular file", path.display()))
    } else {
        None
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
        for note in &self.notes {
            write!(f, "\n  {note}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Typed settings
// ---------------------------------------------------------------------------

/// A type a [`Setting`] can hold: how it is read from the text or the integer
/// an operator wrote.
pub trait FromSetting: Sized {
    /// What a valid value looks like, completing "`x` is not ...", e.g.
    /// `a non-negative integer` or `one of "off", "required"`.
    const EXPECTED: &'static str;

    /// From a string: TOML's, or any environment override.
    fn from_text(text: &str) -> Option<Self>;

    /// From a TOML integer (also a float without a fractional part, such as
    /// `5.0`). By default read as its decimal text.
    fn from_integer(n: i128) -> Option<Self> {
        Self::from_text(&n.to_string())
    }
}

/// One configuration value as written, converted to `T` if it can be.
///
/// Deserializing a `Setting` never fails: a value of the wrong type or shape
/// is kept as text, so the validation pass reports it together with every
/// other problem (a plain `u32` field would end deserialization at the first
/// bad value). Strings, integers, floats and booleans are accepted, so TOML's
/// `priority = 2` and an environment's `"2"` read alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value as written (arrays and tables as `[…]` and `{…}`).
    raw: String,
    value: Option<T>,
}

impl<T: FromSetting> Setting<T> {
    /// The setting for `text`, as an environment override would give it.
    pub fn from_text(text: &str) -> Self {
        Setting {
            raw: text.to_string(),
            value: T::from_text(text),
        }
    }

    fn from_integer(n: i128) -> Self {
        Setting {
            raw: n.to_string(),
            value: T::from_integer(n),
        }
    }

    fn invalid(raw: impl Into<String>) -> Self {
        Setting {
            raw: raw.into(),
            value: None,
        }
    }
}

impl<T> Setting<T> {
    /// The value as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The converted value; `None` when it is not a `T`.
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

impl<T: FromSetting + Clone> Setting<T> {
    /// The value, or `None` after pushing "`raw` is not EXPECTED" under `key`.
    pub fn check(&self, key: &str, r: &mut ConfigReport) -> Option<T> {
        self.check_is(key, r, T::EXPECTED, |_| true)
    }

    /// The value if it converts and `accept`s; otherwise `None` after pushing
    /// "`raw` is not {what}" under `key`, where `what` names the whole range
    /// (e.g. `a positive duration such as "10s"`).
    pub fn check_is(
        &self,
        key: &str,
        r: &mut ConfigReport,
        what: &str,
        accept: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        match &self.value {
            Some(v) if accept(v) => Some(v.clone()),
            _ => {
                r.push(key, format!("`{}` is not {what}", self.raw));
                None
            }
        }
    }
}

/// [`Setting::check`] for an optional key, with its default.
pub trait OptionalSetting<T> {
    /// `default` when the key is absent or (reported) invalid.
    fn check_or(&self, default: T, key: &str, r: &mut ConfigReport) -> T;

    /// As [`Setting::check_is`]; `default` when the key is absent or
    /// (reported) invalid or not accepted.
    fn check_is_or(
        &self,
        default: T,
        key: &str,
        r: &mut ConfigReport,
        what: &str,
        accept: impl FnOnce(&T) -> bool,
    ) -> T;
}

impl<T: FromSetting + Clone> OptionalSetting<T> for Option<Setting<T>> {
    fn check_or(&self, default: T, key: &str, r: &mut ConfigReport) -> T {
        match self {
            Some(s) => s.check(key, r).unwrap_or(default),
            None => default,
        }
    }

    fn check_is_or(
        &self,
        default: T,
        key: &str,
        r: &mut ConfigReport,
        what: &str,
        accept: impl FnOnce(&T) -> bool,
    ) -> T {
        match self {
            Some(s) => s.check_is(key, r, what, accept).unwrap_or(default),
            None => default,
        }
    }
}

impl<'de, T: FromSetting> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SettingVisitor(PhantomData))
    }
}

struct SettingVisitor<T>(PhantomData<fn() -> T>);

impl<'de, T: FromSetting> Visitor<'de> for SettingVisitor<T> {
    type Value = Setting<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Setting::from_text(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Setting::from_integer(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Setting::from_integer(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
        Ok(Setting::from_integer(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        Ok(match i128::try_from(v) {
            Ok(n) => Setting::from_integer(n),
            Err(_) => Setting::invalid(v.to_string()),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // A whole number such as `5.0` reads as the integer (as its text, "5",
        // always did); anything else keeps its text and is not a value.
        let whole = v.is_finite() && v.fract() == 0.0 && v.abs() < 1e30;
        Ok(if whole {
            Setting::from_integer(v as i128)
        } else {
            Setting::invalid(v.to_string())
        })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Setting::invalid(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Setting::invalid(""))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Setting::invalid("[…]"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Setting::invalid("{…}"))
    }
}

macro_rules! unsigned_setting {
    ($($t:ty => $max:literal),*) => {$(
        impl FromSetting for $t {
            // With its bound: past it, "not a non-negative integer" was
            // said of one that is (config audit, stop 63).
            const EXPECTED: &'static str = concat!("a non-negative integer up to ", $max);

            /// Surrounding spaces and `_` separators (`10_000`) are allowed.
            fn from_text(text: &str) -> Option<Self> {
                text.trim().replace('_', "").parse().ok()
            }

            fn from_integer(n: i128) -> Option<Self> {
                Self::try_from(n).ok()
            }
        }
    )*};
}

unsigned_setting!(u8 => "255", u32 => "4294967295", u64 => "18446744073709551615", usize => "18446744073709551615");

impl FromSetting for Duration {
    const EXPECTED: &'static str = "a duration such as \"500ms\", \"10s\", \"2m\"";

    /// [`parse_duration`]: humantime's syntax, or a bare number of seconds.
    fn from_text(text: &str) -> Option<Self> {
        parse_duration(text)
    }

    /// Seconds.
    fn from_integer(n: i128) -> Option<Self> {
        u64::try_from(n).ok().map(Duration::from_secs)
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
/// also `"1m 30s"`); a bare number is seconds. At most a century: no
/// setting means more, and a deadline that far past the clock's range
/// would panic where it is added to an instant.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let d = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok().map(Duration::from_secs)?
    } else {
        humantime::parse_duration(text).ok()?
    };
    (d <= Duration::from_secs(100 * 365 * 24 * 3600)).then_some(d)
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

    /// A section as the proxy reads one: through the `config` crate, a TOML
    /// file merged with `T__KEY` environment overrides (always strings).
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        count: Option<Setting<u32>>,
        bytes: Option<Setting<u64>>,
        bits: Option<Setting<u8>>,
        wait: Option<Setting<Duration>>,
        other: Option<Setting<Duration>>,
    }

    fn section(toml: &str, env: &[(&str, &str)]) -> Section {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("T")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("a Setting never fails deserialization")
    }

    fn value<T: Clone>(s: &Option<Setting<T>>) -> Option<T> {
        s.as_ref().and_then(|s| s.value().cloned())
    }

    #[test]
    fn settings_read_strings_and_integers() {
        let s = section(
            "count = 5\nbytes = \"10_000\"\nbits = \" 24 \"\nwait = \"1m 30s\"\nother = 7",
            &[],
        );
        assert_eq!(value(&s.count), Some(5), "a TOML integer");
        assert_eq!(value(&s.bytes), Some(10_000), "a string with separators");
        assert_eq!(value(&s.bits), Some(24), "surrounding spaces");
        assert_eq!(value(&s.wait), Some(Duration::from_secs(90)), "humantime");
        assert_eq!(value(&s.other), Some(Duration::from_secs(7)), "seconds");

        // Environment overrides are always strings.
        let s = section(
            "count = 1\nwait = \"1s\"",
            &[("T__COUNT", "5"), ("T__WAIT", "500ms"), ("T__BITS", "8")],
        );
        assert_eq!(value(&s.count), Some(5));
        assert_eq!(value(&s.wait), Some(Duration::from_millis(500)));
        assert_eq!(value(&s.bits), Some(8));
        assert!(
            s.bytes.is_none() && s.other.is_none(),
            "absent keys are None"
        );

        // A whole float reads as its integer, as its text "5" always did.
        let s = section("count = 5.0\nwait = 2.0\nbytes = 0.5", &[]);
        assert_eq!(value(&s.count), Some(5));
        assert_eq!(value(&s.wait), Some(Duration::from_secs(2)));
        assert_eq!(value(&s.bytes), None);
    }

    #[test]
    fn bad_settings_are_all_reported_with_their_keys() {
        let s = section(
            "count = \"high\"\nbytes = -1\nbits = 256\nwait = [1, 2]\nother = true",
            &[],
        );
        let mut r = ConfigReport::new("test");
        assert_eq!(
            s.count.as_ref().and_then(|c| c.check("t.count", &mut r)),
            None
        );
        assert_eq!(s.bytes.check_or(7, "t.bytes", &mut r), 7);
        assert_eq!(s.bits.check_or(24, "t.bits", &mut r), 24);
        assert_eq!(
            s.wait.check_or(Duration::ZERO, "t.wait", &mut r),
            Duration::ZERO
        );
        assert_eq!(
            s.other.check_or(Duration::ZERO, "t.other", &mut r),
            Duration::ZERO
        );
        let text = r.to_string();
        for line in [
            "test: 5 problems",
            "- t.count: `high` is not a non-negative integer",
            "- t.bytes: `-1` is not a non-negative integer",
            "- t.bits: `256` is not a non-negative integer up to 255",
            "- t.wait: `[…]` is not a duration such as \"500ms\", \"10s\", \"2m\"",
            "- t.other: `true` is not a duration",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }

        // An environment value that is not a number, under its key.
        let s = section("", &[("T__COUNT", "5x")]);
        let mut r = ConfigReport::new("env");
        assert_eq!(s.count.check_or(1, "t.count", &mut r), 1);
        assert_eq!(r.problems[0].key, "t.count");
        assert_eq!(
            r.problems[0].message,
            "`5x` is not a non-negative integer up to 4294967295"
        );
    }

    #[test]
    fn check_is_names_the_accepted_range() {
        let mut r = ConfigReport::new("test");
        let positive = "a positive duration such as \"10s\"";
        let zero = Some(Setting::<Duration>::from_text("0s"));
        let ten = Some(Setting::<Duration>::from_text("10s"));
        let d = Duration::from_secs(1);
        assert_eq!(
            zero.check_is_or(d, "z", &mut r, positive, |d| !d.is_zero()),
            d
        );
        assert_eq!(
            ten.check_is_or(d, "t", &mut r, positive, |d| !d.is_zero()),
            Duration::from_secs(10)
        );
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].key, "z");
        assert_eq!(
            r.problems[0].message,
            "`0s` is not a positive duration such as \"10s\""
        );
        assert_eq!(zero.as_ref().map(Setting::raw), Some("0s"));
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
