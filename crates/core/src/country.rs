//! ISO 3166-1 alpha-2 country codes as a two-byte `Copy` type.
//!
//! Countries flow through the hot path (GeoIP lookup → jurisdiction table), so
//! they are parsed once into [`Country`] and never allocated again. Only codes
//! that ISO 3166-1 assigns (plus `XK`, which MaxMind uses for Kosovo) parse:
//! a typo such as `"UK"` in a policy is a load-time error, not a silent miss.

use std::fmt;

/// An upper-case, officially assigned ISO 3166-1 alpha-2 code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

/// Every officially assigned alpha-2 code, plus XK (Kosovo, user-assigned but
/// used by GeoIP vendors).
const ASSIGNED: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM \
PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// `ASSIGNED` as a table by [`Country::index`], built at compile time.
const IS_ASSIGNED: [bool; 676] = {
    let mut table = [false; 676];
    let codes = ASSIGNED.as_bytes();
    let mut i = 0;
    while i + 1 < codes.len() {
        if codes[i].is_ascii_uppercase() && codes[i + 1].is_ascii_uppercase() {
            table[(codes[i] - b'A') as usize * 26 + (codes[i + 1] - b'A') as usize] = true;
            i += 2;
        } else {
            i += 1;
        }
    }
    table
};

/// Every two-letter upper-case code as text, by [`Country::index`], built
/// at compile time.
static CODES: [&str; 676] = {
    const LETTERS: &[u8; 676 * 2] = &{
        let mut t = [0u8; 676 * 2];
        let mut i = 0;
        while i < 676 {
            t[2 * i] = b'A' + (i / 26) as u8;
            t[2 * i + 1] = b'A' + (i % 26) as u8;
            i += 1;
        }
        t
    };
    let mut table = [""; 676];
    let mut i = 0;
    while i < 676 {
        let (_, rest) = LETTERS.split_at(2 * i);
        let (two, _) = rest.split_at(2);
        table[i] = match std::str::from_utf8(two) {
            Ok(code) => code,
            Err(_) => panic!("ASCII letters"),
        };
        i += 1;
    }
    table
};

/// `code` from the table of codes when it is two upper-case ASCII letters
/// (assigned or not): text that lives for the whole run, for values that
/// borrow it instead of copying it.
pub fn code_text(code: &str) -> Option<&'static str> {
    match *code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            Some(CODES[usize::from(a - b'A') * 26 + usize::from(b - b'A')])
        }
        _ => None,
    }
}

impl Country {
    /// Parses a code case-insensitively; `None` unless ISO assigns it.
    pub fn parse(code: &str) -> Option<Country> {
        let bytes = code.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        let upper = [bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()];
        let country = Country(upper);
        IS_ASSIGNED[country.index()].then_some(country)
    }

    /// Why `code` is refused where [`Country::parse`] finds no country,
    /// with a hint for the codes people write for a place ISO names
    /// otherwise.
    pub fn unknown(code: &str) -> String {
        let hint = match code.to_ascii_uppercase().as_str() {
            "UK" => " (the United Kingdom is GB)",
            "EU" => " (the European Union is not a country: list its members)",
            "EL" => " (Greece is GR)",
            _ => "",
        };
        format!("`{code}` is not an ISO 3166-1 alpha-2 code{hint}")
    }

    /// The code as a `&str` (always two upper-case ASCII letters), from a
    /// table: `str::from_utf8` on the two bytes took ~47 instructions, and
    /// this runs for every forwarded upload (issue 23).
    pub fn as_str(&self) -> &'static str {
        CODES[self.index()]
    }

    /// A dense index in `0..676`, for table lookups without hashing.
    pub fn index(self) -> usize {
        usize::from(self.0[0] - b'A') * 26 + usize::from(self.0[1] - b'A')
    }

    /// The country with this [`Country::index`]; `None` unless ISO assigns it.
    pub fn from_index(index: usize) -> Option<Country> {
        if index >= 26 * 26 {
            return None;
        }
        let code = [b'A' + (index / 26) as u8, b'A' + (index % 26) as u8];
        IS_ASSIGNED[index].then_some(Country(code))
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_assigned_codes_only() {
        assert_eq!(
            Country::parse("ch").map(|c| c.to_string()),
            Some("CH".into())
        );
        assert!(Country::parse("GB").is_some());
        assert!(Country::parse("XK").is_some());
        assert!(Country::parse("UK").is_none(), "UK is not ISO 3166 (GB is)");
        assert!(Country::parse("EU").is_none());
        assert!(Country::parse("C").is_none());
        assert!(Country::parse("CHE").is_none());
        assert!(Country::parse("C1").is_none());
        assert!(Country::parse("ÄÖ").is_none());
    }

    #[test]
    fn index_is_dense_and_distinct() {
        let a = Country::parse("AD").map(Country::index);
        let z = Country::parse("ZW").map(Country::index);
        assert_eq!(a, Some(3));
        assert_eq!(z, Some(25 * 26 + 22));
        assert_eq!(ASSIGNED.split_whitespace().count(), 250);
        assert_eq!(IS_ASSIGNED.iter().filter(|a| **a).count(), 250);
        for code in ASSIGNED.split_whitespace() {
            let c = Country::parse(code).unwrap();
            assert_eq!(Country::from_index(c.index()), Some(c));
            assert_eq!(c.as_str(), code, "the text table agrees");
            assert_eq!(code_text(code), Some(code));
            assert_eq!(
                Country::parse(&code.to_lowercase()).map(|c| c.as_str()),
                Some(code)
            );
        }
        assert_eq!(
            Country::from_index(Country::parse("GB").unwrap().index() + 1),
            None
        );
        assert_eq!(Country::from_index(676), None);
        assert_eq!(code_text("ZZ"), Some("ZZ"), "unassigned, still a code");
        assert_eq!(code_text("ch"), None);
        assert_eq!(code_text("unknown"), None);
    }
}
