//! Where a configuration is read from — a TOML file, and the environment's
//! `RESIDENCY_PROXY__SECTION__KEY` overrides merged over it by the `config`
//! crate — and what stops it deserializing into its raw serde shape,
//! reported under the key it concerns. Shared by the configuration
//! ([`crate::config`]) and the tenants file (`tenancy.file`,
//! [`crate::tenancy`]), which both name every unknown key at once
//! ([`deserialize_failed`]).

use std::collections::HashMap;

use residency_core::report::ConfigReport;
use serde::de::DeserializeOwned;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "RESIDENCY_PROXY";

/// The environment's overrides as the `config` crate reads them: after
/// `RESIDENCY_PROXY__`, `__` between levels, matched without case. From
/// `vars` when given (tests, and [`deserialize_failed`]'s runs again), else
/// from the process's environment.
pub fn environment(vars: Option<config::Map<String, String>>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(vars)
}

/// The process's `RESIDENCY_PROXY__…` variables, as [`environment`] takes
/// them. One that is not Unicode is left out: the `config` crate refuses it
/// when the configuration is first read, before these are needed.
pub fn process_overrides() -> config::Map<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| override_key(k).is_some())
        .collect()
}

/// Warnings for the process's variables that look meant for the proxy but
/// are not read: named `RESIDENCY_PROXY` then anything but `__` (one
/// underscore, `RESIDENCY_PROXY_ADMIN__ADDRESS`, or none). The `config`
/// crate passes them over without a word, so a setting the operator
/// believes made was not (config audit, stop 70).
pub fn unread_variables() -> Vec<String> {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    unread_among(&names)
}

fn unread_among(names: &[String]) -> Vec<String> {
    let mut unread: Vec<String> = names
        .iter()
        .filter(|name| {
            name.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                && override_key(name).is_none()
        })
        .map(|name| {
            let rest = name[ENV_PREFIX.len()..].trim_start_matches('_');
            format!(
                "environment: {name} is not read: an override is named {ENV_PREFIX}__ and then the key's levels joined by __ ({ENV_PREFIX}__{rest}?)"
            )
        })
        .collect();
    unread.sort();
    unread
}

/// The `RESIDENCY_PROXY__…` variable among `vars` that sets `key` or
/// something under it (`limits.max_body_byte`:
/// `RESIDENCY_PROXY__LIMITS__MAX_BODY_BYTE`; `listeners`:
/// `RESIDENCY_PROXY__LISTENERS__0__ADDRESS`).
pub fn override_of<'a>(key: &str, vars: &'a [String]) -> Option<&'a str> {
    vars.iter().map(String::as_str).find(|var| sets(var, key))
}

/// Whether the variable `var` sets `key` or something under it.
fn sets(var: &str, key: &str) -> bool {
    let Some(rest) = override_key(var) else {
        return false;
    };
    let dotted = rest.to_ascii_lowercase().replace("__", ".");
    dotted == key
        || dotted
            .strip_prefix(key)
            .is_some_and(|under| under.starts_with('.'))
}

/// What follows `RESIDENCY_PROXY__` in an override's name (the prefix
/// matched without case, as the `config` crate does); `None` for any other
/// variable.
pub fn override_key(var: &str) -> Option<&str> {
    let prefix = format!("{ENV_PREFIX}__");
    var.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(&prefix))
        .map(|_| &var[prefix.len()..])
}

/// The problem that stops deserializing a file, and the variables `env`
/// merged over it, into `T` and, when it is an unknown key, every other
/// unknown key of both: serde stops at the first, and a file with three
/// misspelt keys took three runs of `check-config` (stop 68's config lows).
/// Each is found by deserializing again without the keys already found, taken
/// out of the file's text and out of the variables (at most 32 times; in the
/// error path only). Serde meets the keys in a hash map's order, so an
/// unknown key a variable sets may come before or after the file's: when only
/// the file was deserialized again, it hid the file's unknown keys, or was
/// itself never named (config audit).
///
/// `source` heads the report; a problem no key names is reported under
/// `whole` (`config`; `tenancy.file`); `text` is the file's text.
pub fn deserialize_failed<T: DeserializeOwned>(
    source: &str,
    whole: &str,
    text: Option<&str>,
    env: Option<&config::Map<String, String>>,
    e: &config::ConfigError,
) -> ConfigReport {
    let mut report = deserialize_error(source, whole, text, e);
    let unknown = |r: &ConfigReport| {
        r.problems
            .first()
            .filter(|p| r.problems.len() == 1 && p.message.starts_with("unknown key"))
            .map(|p| p.key.clone())
    };
    let (Some(mut key), Some(Ok(mut table))) =
        (unknown(&report), text.map(str::parse::<toml::Table>))
    else {
        return report;
    };
    let mut env = env.cloned();
    for _ in 0..32 {
        // Both: a key the file has may also be set by a variable.
        let in_file = remove_key(&mut table, &key);
        let in_env = env.as_mut().is_some_and(|vars| {
            let before = vars.len();
            vars.retain(|var, _| !sets(var, &key));
            vars.len() < before
        });
        if !in_file && !in_env {
            break;
        }
        let Ok(rest) = toml::to_string(&table) else {
            break;
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&rest, config::FileFormat::Toml));
        if let Some(vars) = &env {
            builder = builder.add_source(environment(Some(vars.clone())));
        }
        let Err(e) = builder.build().and_then(|c| c.try_deserialize::<T>()) else {
            break;
        };
        let next = deserialize_error(source, whole, Some(&rest), &e);
        match unknown(&next) {
            Some(found) if !report.problems.iter().any(|p| p.key == found) => {
                report.problems.extend(next.problems);
                key = found;
            }
            _ => break,
        }
    }
    // In the order of their keys, not of a hash map's.
    report.problems.sort_by(|a, b| a.key.cmp(&b.key));
    report
}

/// Removes `key` (`admin.adress`, `listeners[0].tls.certs`) from `table`;
/// whether it was there.
fn remove_key(table: &mut toml::Table, key: &str) -> bool {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut at = table;
    for part in parts {
        let (name, indices) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest)),
            None => (part, None),
        };
        let mut value = match at.get_mut(name) {
            Some(value) => value,
            None => return false,
        };
        for index in indices.into_iter().flat_map(|rest| rest.split('[')) {
            let Some(i) = index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
            else {
                return false;
            };
            value = match value.as_array_mut().and_then(|a| a.get_mut(i)) {
                Some(value) => value,
                None => return false,
            };
        }
        at = match value.as_table_mut() {
            Some(table) => table,
            None => return false,
        };
    }
    at.remove(last).is_some()
}

/// The one problem that stops deserialization (a TOML syntax error, an
/// unknown key, a section of the wrong shape), under the key it concerns when
/// the `config` crate names it, else under `whole`.
fn deserialize_error(
    source: &str,
    whole: &str,
    text: Option<&str>,
    e: &config::ConfigError,
) -> ConfigReport {
    let (key, mut message) = error_key(e);
    if key.is_none() && !message.contains("TOML parse error") {
        // Some malformed values (`1_0F`) come from the `config` crate
        // without where they are; the TOML parser names the line.
        if let Some(Err(located)) = text.map(str::parse::<toml::Table>) {
            message = located.to_string();
        }
    }
    // A TOML error located at a line: under the key written there.
    let key = key.or_else(|| {
        let line = message
            .strip_prefix("TOML parse error at line ")?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        key_at_line(text?, line)
    });
    if message.contains("as i128, expected any valid TOML value") {
        // A literal past what TOML's integers hold.
        message = message.replace("invalid type: integer", "integer").replace(
            "as i128, expected any valid TOML value",
            "is too large: TOML integers go up to 9223372036854775807",
        );
    }
    // serde names the type a table deserialises into (`struct RawAdmin`):
    // a table of settings, to a person.
    if let Some(at) = message.find("expected struct Raw") {
        message.replace_range(at.., "expected a table of settings");
        if let Some(k) = &key {
            message.push_str(&format!(" ([{k}] with its keys)"));
        }
    }
    // One value where a list is wanted: show the list's form.
    if let (Some(k), true) = (&key, message.starts_with("invalid type: string")) {
        if message.ends_with("expected a sequence") {
            let last = k.rsplit('.').next().unwrap_or(k);
            // A list of tables is written as tables (it showed
            // `listeners = ["…"]`: config audit, stop 63).
            let tables = ["listeners", "tenants", "overrides", "canaries", "witnesses"];
            let pairs = ["certificates"];
            if tables.contains(&last) {
                message.push_str(&format!(" (a list of tables: [[{k}]], each with its keys)"));
            } else if pairs.contains(&last) {
                message.push_str(&format!(
                    " (a list of tables: {last} = [{{ cert = \"…\", key = \"…\" }}])"
                ));
            } else {
                message.push_str(&format!(" (a list: {last} = [\"…\"])"));
            }
        }
    }
    let mut report = ConfigReport::new(source);
    report.push(key.unwrap_or_else(|| whole.into()), message);
    report
}

/// The key set on line `line` (1-based) of a TOML `text`, under the
/// table header above it (`limits.max_body_bytes`, `listeners[1].address`
/// for the second `[[listeners]]`); `None` when the line sets no key.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    // Dotted, each part without its quotes (`"virginia"`: virginia).
    let clean = |name: &str| {
        name.split('.')
            .map(|part| part.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    // `[listeners.tls]` after the second `[[listeners]]`: `listeners[1].tls`.
    let indexed = |name: String, arrays: &HashMap<String, usize>| {
        let within = arrays
            .iter()
            .filter(|(a, _)| name == **a || name.starts_with(&format!("{a}.")))
            .max_by_key(|(a, _)| a.len());
        match within {
            Some((a, i)) => format!("{a}[{i}]{}", &name[a.len()..]),
            None => name,
        }
    };
    for (n, raw) in text.lines().enumerate().take(line) {
        let l = raw.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = clean(name);
            let i = *arrays
                .entry(name.clone())
                .and_modify(|i| *i += 1)
                .or_default();
            table = format!("{name}[{i}]");
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = indexed(clean(name), &arrays);
        } else if n + 1 == line {
            let (name, _) = l.split_once('=')?;
            let name = clean(name);
            let bare = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            return bare.then(|| match table.is_empty() {
                true => name,
                false => format!("{table}.{name}"),
            });
        }
    }
    None
}

/// The key a `config` error concerns, and its message without the key.
fn error_key(e: &config::ConfigError) -> (Option<String>, String) {
    use config::ConfigError;
    match e {
        ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.as_deref().map(dotted),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            let (inner, message) = error_key(error);
            let key = dotted(key);
            let key = match inner {
                Some(inner) if inner.starts_with('[') => format!("{key}{inner}"),
                Some(inner) => format!("{key}.{inner}"),
                None => key,
            };
            (Some(key), message)
        }
        ConfigError::NotFound(key) => (Some(dotted(key)), "missing".into()),
        ConfigError::Message(message) => match unknown_field(message) {
            Some((field, rest)) => (Some(field.into()), format!("unknown key{rest}")),
            None => (None, message.clone()),
        },
        other => (None, other.to_string()),
    }
}

/// serde's "unknown field `foo`, expected one of `a`, `b`": the field and
/// what follows it (", expected one of `a`, `b`").
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// The `config` crate writes `a[0]b` for the key `b` of the first element of
/// `a`; the report writes `a[0].b`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut after_bracket = false;
    for c in key.chars() {
        if after_bracket && c != '.' && c != '[' {
            out.push('.');
        }
        after_bracket = c == ']';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_named_almost_as_overrides_are_warned_of() {
        let names = [
            "RESIDENCY_PROXY_ADMIN__ADDRESS",
            "residency_proxyLIMITS__MAX_BODY_BYTES",
            "RESIDENCY_PROXY",
            // Read: an override (a wrong key there is an error instead).
            "RESIDENCY_PROXY__ADMIN__ADDRESS",
            "Residency_Proxy__health__path",
            // Not the proxy's.
            "RESIDENCY_PROX_ADMIN",
            "PATH",
        ]
        .map(String::from);
        assert_eq!(
            unread_among(&names),
            [
                "environment: RESIDENCY_PROXY is not read: an override is named RESIDENCY_PROXY__ and then the key's levels joined by __ (RESIDENCY_PROXY__?)",
                "environment: RESIDENCY_PROXY_ADMIN__ADDRESS is not read: an override is named RESIDENCY_PROXY__ and then the key's levels joined by __ (RESIDENCY_PROXY__ADMIN__ADDRESS?)",
                "environment: residency_proxyLIMITS__MAX_BODY_BYTES is not read: an override is named RESIDENCY_PROXY__ and then the key's levels joined by __ (RESIDENCY_PROXY__LIMITS__MAX_BODY_BYTES?)",
            ]
        );
    }

    #[test]
    fn the_key_on_a_line_is_found_under_its_table() {
        assert_eq!(
            key_at_line("a = 1\n[t]\n# c\nb.c = 2\n", 4).as_deref(),
            Some("t.b.c")
        );
        assert_eq!(key_at_line("a = 1\n[t]\n# c\n", 3), None);
        let two = "[[listeners]]\n[listeners.tls]\n[[listeners]]\n[listeners.tls]\nclient_ca = x\n";
        assert_eq!(
            key_at_line(two, 5).as_deref(),
            Some("listeners[1].tls.client_ca")
        );
        let quoted = "[datacenters.\"virginia\"]\n\"priority\" = x\n";
        assert_eq!(
            key_at_line(quoted, 2).as_deref(),
            Some("datacenters.virginia.priority")
        );
    }

    #[test]
    fn config_keys_are_dotted() {
        assert_eq!(
            dotted("listeners[0]tls.certificates[1]key"),
            "listeners[0].tls.certificates[1].key"
        );
        assert_eq!(dotted("a[0][1]"), "a[0][1]");
        assert_eq!(dotted("timeouts"), "timeouts");
    }
}
