//! A request's query string, read by name: `application/x-www-form-urlencoded`
//! as the WHATWG URL standard parses it (`form_urlencoded`: `%XX` escapes
//! and `+` decoded in names and values).

use std::borrow::Cow;

/// The decoded value of `name` in `query`; `None` without it. A name given
/// twice is an error naming it: which of the two was meant is not guessed.
pub fn get<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, String> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(format!("{name}: given more than once"));
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// `name`'s value as a non-negative decimal integer: digits only (no sign,
/// no spaces); an error naming it otherwise.
pub fn integer(query: &str, name: &str) -> Result<Option<u64>, String> {
    let Some(value) = get(query, name)? else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name}: not a non-negative integer"));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("{name}: larger than 18446744073709551615"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_and_repeats_refused() {
        assert_eq!(
            get("ip=2001%3Adb8%3A%3A1", "ip").unwrap().unwrap(),
            "2001:db8::1"
        );
        assert_eq!(get("a=1&b=2", "b").unwrap().unwrap(), "2");
        assert_eq!(
            get("%61=1", "a").unwrap().unwrap(),
            "1",
            "names decoded too"
        );
        assert_eq!(get("a=1", "b").unwrap(), None);
        assert_eq!(get("a", "a").unwrap().unwrap(), "", "a name without =");
        assert_eq!(get("a=1&a=2", "a").unwrap_err(), "a: given more than once");
        assert_eq!(
            get("a=%zz", "a").unwrap().unwrap(),
            "%zz",
            "a bad escape kept"
        );
    }

    #[test]
    fn integers_are_digits_only() {
        assert_eq!(integer("size=12", "size"), Ok(Some(12)));
        assert_eq!(integer("size=%31%32", "size"), Ok(Some(12)));
        assert_eq!(integer("", "size"), Ok(None));
        for bad in [
            "size=+5",
            "size=%2B5",
            "size=-1",
            "size= 5",
            "size=",
            "size=5x",
            "size=0x5",
        ] {
            assert_eq!(
                integer(bad, "size").unwrap_err(),
                "size: not a non-negative integer",
                "{bad}"
            );
        }
        assert!(integer("size=99999999999999999999", "size")
            .unwrap_err()
            .contains("larger than"));
        assert_eq!(
            integer("size=1&size=2", "size").unwrap_err(),
            "size: given more than once"
        );
    }
}
