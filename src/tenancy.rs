//! Tenants in the running proxy: `[[tenants]]` (and `[tenancy] file`),
//! signed tenant tokens (`[tenancy.token]`), the names in a client
//! certificate, and which tenant — if any — a request is for.
//!
//! Recognition ([`Tenancy::recognize`]) reads what the connection already
//! holds — the server name and the certificate's names, taken once per
//! connection — and, with tokens on, the token header. The pins and the
//! overlap checks are `residency_core::tenant`'s; the token is verified here
//! (`jsonwebtoken`, EdDSA and ES256 only, `iss`, `aud` and `exp` required).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use residency_core::policy::Policy;
use residency_core::report::{ConfigReport, OptionalSetting, Setting};
use residency_core::tenant::{
    self, CertNames, Conflict, RawTenant, Recognized, Source, TenantId, Tenants,
};
use serde::Deserialize;

/// A JWK Set (RFC 7517 §5) whose keys are read one by one.
#[derive(Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

/// `[tenancy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenancy {
    /// A TOML file of more `[[tenants]]`, watched and reloaded like the rest.
    pub file: Option<String>,
    /// `"name"` (default) or `"hmac"`: how records name the tenant.
    pub record: Option<String>,
    /// With `record = "hmac"`: a file of at least 32 secret bytes.
    pub record_hmac_key: Option<String>,
    /// Also count requests per tenant name
    /// (`residency_tenant_requests_by_tenant_total`).
    pub metrics_by_tenant: Option<bool>,
    pub token: Option<RawToken>,
}

/// `[tenancy.token]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Default `authorization` (`Bearer <token>`); another header carries
    /// the bare token.
    pub header: Option<String>,
    /// A JWKS file: Ed25519 (`OKP`, EdDSA) and P-256 (`EC`, ES256) keys.
    pub jwks: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim that names the tenant (default `tenant`).
    pub claim: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 60 s).
    pub leeway: Option<Setting<Duration>>,
    /// The `typ` every token's header must carry (RFC 8725 §3.11,
    /// explicit typing), such as `at+jwt`; unset, any `typ` or none.
    pub typ: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantsFile {
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

/// The loaded tenancy: tenants, the token verifier, how records name them.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pub tenants: Tenants,
    pub token: Option<Arc<TokenVerifier>>,
    /// Per tenant id, the name its records carry (the name, or its keyed
    /// hash) — when a certificate or token recognised it; see
    /// [`Tenancy::record_name`].
    pub record_names: Vec<String>,
    /// The same, when its server name alone did: the name, or a keyed hash
    /// of its own.
    pub record_names_by_server_name: Vec<String>,
    /// `record` was not set: the names go into the log in clear by default
    /// (a warning at start, with tenants and a log).
    pub record_by_default: bool,
    pub metrics_by_tenant: bool,
    /// Files to watch for reload (the tenants file, the JWKS).
    pub files: Vec<PathBuf>,
    /// `record_hmac_key`'s file (for the warning about files every user
    /// can read).
    pub record_hmac_key_file: Option<PathBuf>,
    /// `tenancy.file`, when it holds no tenant (a warning: emptied, or
    /// read while being written).
    pub empty_file: Option<PathBuf>,
}

/// Why a token did not recognise a tenant (logged; the client gets 401
/// `invalid_tenant_token`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted (EdDSA, ES256)")]
    Algorithm(Algorithm),
    #[error("no key in the JWKS for kid {0:?} and its algorithm")]
    UnknownKey(Option<String>),
    #[error("{0}")]
    Invalid(String),
    #[error("claim `{0}` is missing or not a string")]
    Claim(String),
    #[error("no tenant named `{0}`")]
    UnknownTenant(String),
}

/// Verifies tenant tokens against a local JWKS.
pub struct TokenVerifier {
    header: HeaderName,
    bearer: bool,
    claim: String,
    keys: Vec<Key>,
    /// The required `typ`, when one is (compared by [`same_media_type`]).
    typ: Option<String>,
    /// What was left out of the key set, and why (said when `serve`
    /// starts or a reload is taken, and by `check-config`).
    pub warnings: Vec<String>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("header", &self.header)
            .field("claim", &self.claim)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TokenVerifier {
    /// The token a request carries, if any: `Bearer <token>` in
    /// `Authorization` (another scheme is not ours), or the whole value of
    /// another header. A token that is there but cannot be read — the
    /// header twice, bytes outside ASCII, `Bearer` without a token — is
    /// `Some("")`, which fails verification: a present token never falls
    /// back to GeoIP.
    pub fn token_in<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let mut values = headers.get_all(&self.header).iter();
        let first = values.next()?;
        let unreadable = Some("");
        if values.next().is_some() {
            return unreadable;
        }
        let Ok(value) = first.to_str() else {
            return unreadable;
        };
        if !self.bearer {
            return Some(value.trim());
        }
        let value = value.trim();
        let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim());
        }
        // A JWT without its scheme, or with `Bearer` run into it
        // (`Bearer,eyJ…`): a token that is there, unreadable — not another
        // scheme's credentials, which leave the decision to GeoIP (JOSE
        // audit, stop 69: such uploads went by GeoIP, past their tenant's pin).
        let run_into = scheme
            .as_bytes()
            .get(..6)
            .is_some_and(|b| b.eq_ignore_ascii_case(b"bearer"));
        (run_into || looks_like_a_jws(value)).then_some("")
    }

    /// The field the token is read from.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The tenant name a valid token's claim gives.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(described(&e)))?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
            return Err(TokenError::Algorithm(header.alg));
        }
        if let Some(want) = &self.typ {
            match &header.typ {
                Some(typ) if same_media_type(typ, want) => {}
                Some(typ) => {
                    return Err(TokenError::Invalid(format!(
                        // Debug: the token's text, escaped, in the log.
                        "typ is {:?}, not the required {want:?}",
                        shortened(typ)
                    )));
                }
                None => {
                    return Err(TokenError::Invalid(format!(
                        "the header has no typ; {want:?} is required"
                    )))
                }
            }
        }
        let mut keys = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                // A set of one key: the token's `kid` is a hint (RFC 7515
                // §4.1.4) the set cannot contradict when the key has none.
                (None, _) | (Some(_), None) => self.keys.len() == 1,
            })
            .peekable();
        if keys.peek().is_none() {
            return Err(TokenError::UnknownKey(header.kid.as_deref().map(shortened)));
        }
        refuse_crit(token)?;
        // Each key of the token's `kid`: a set should give each key its own
        // (RFC 7517 §4.5), but one that does not (a key replaced under the
        // same id, both published during the change) must not have its
        // newer key's tokens refused because the older one came first.
        let mut refused = None;
        let (claims, leeway) = loop {
            let Some(key) = keys.next() else {
                return Err(refused.unwrap_or(TokenError::UnknownKey(None)));
            };
            match jsonwebtoken::decode::<UniqueClaims>(token, &key.key, &key.validation) {
                Ok(data) => break (data.claims.0, key.validation.leeway),
                Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    refused.get_or_insert(TokenError::Invalid(described(&e)));
                }
                Err(e) => return Err(TokenError::Invalid(described(&e))),
            }
        };
        // What jsonwebtoken lets through: an `nbf` it cannot read (it then
        // skips the check), an `iat` it does not look at, and an `iss` given
        // as a list.
        let numeric_date = |n: &serde_json::Value| {
            n.as_f64()
                .filter(|s| s.is_finite() && (0.0..u64::MAX as f64).contains(s))
        };
        for claim in ["nbf", "iat"] {
            if claims.get(claim).is_some_and(|n| numeric_date(n).is_none()) {
                return Err(TokenError::Invalid(format!(
                    "{claim} is not a NumericDate (seconds since 1970, not negative)"
                )));
            }
        }
        // Issued ahead of this clock by more than the leeway: an issuer
        // whose clock is wrong, or a token made to be used later (RFC 7519
        // leaves `iat` to the application; `nbf` says "later" openly).
        if let Some(iat) = claims.get("iat").and_then(numeric_date) {
            let now = jsonwebtoken::get_current_timestamp();
            if iat > (now + leeway) as f64 {
                return Err(TokenError::Invalid(format!(
                    "iat is {:.0} s ahead of this clock (leeway {leeway} s)",
                    iat - now as f64
                )));
            }
        }
        if !claims.get("iss").is_some_and(serde_json::Value::is_string) {
            return Err(TokenError::Invalid("iss is not a string".into()));
        }
        claims
            .get(&self.claim)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| TokenError::Claim(self.claim.clone()))
    }
}

/// A value a token brought (its `kid`, `typ` or tenant name), as an error
/// carries it to the log: its first 64 characters, then `…`. The request
/// head bounds it, but a 401's log line need not repeat kilobytes of it.
fn shortened(text: &str) -> String {
    shortened_to(text, 64)
}

/// A JWS in compact form, as a JWT is: three base64url parts (padding and
/// a trailing `;` or `,` aside), the first a JSON object's (`eyJ` is
/// `{"`; a header may start with white space, verification, stop 69).
fn looks_like_a_jws(value: &str) -> bool {
    use base64::Engine as _;
    let value = value.trim_end_matches([';', ',']);
    let mut parts = value.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.');
    value.bytes().all(base64url)
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .is_ok_and(|json| json.trim_ascii_start().starts_with(b"{"))
}

/// Why a key's public point cannot be trusted to verify: an Ed25519 `x`
/// of another length than 32 bytes, or one of the small-order points
/// (under one, a forged signature verifies for any message: anyone could
/// sign a token for any tenant — ring verifies it; JOSE audit, stop 69),
/// or a P-256 point of another size or not on the curve (nothing verifies:
/// the key was taken silently). `None` for a point that is fine, or whose
/// text does not decode (`DecodingKey::from_jwk` says so). An Ed25519
/// encoding that is no point at all verifies nothing and is not found here.
fn unusable_point(params: &AlgorithmParameters) -> Option<String> {
    use base64::Engine as _;
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    match params {
        AlgorithmParameters::OctetKeyPair(p) => {
            let Ok(x) = <[u8; 32]>::try_from(decode(&p.x)?) else {
                return Some("its `x` is not 32 bytes".into());
            };
            residency_log::note::small_order(&x).then(|| {
                "its `x` is a small-order point, under which a forged signature verifies: anyone could sign a token for any tenant".into()
            })
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (decode(&p.x)?, decode(&p.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Some("its `x` and `y` are not 32 bytes each".into());
            }
            // ECDH checks the peer's point as the signature check does not
            // say: on the curve, not the point at infinity.
            use ring::agreement::{
                agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256,
            };
            let point = [&[4u8][..], &x, &y].concat();
            let ours =
                EphemeralPrivateKey::generate(&ECDH_P256, &ring::rand::SystemRandom::new()).ok()?;
            agree_ephemeral(ours, &UnparsedPublicKey::new(&ECDH_P256, &point), |_| ())
                .is_err()
                .then(|| "its point is not on the P-256 curve: no token verifies under it".into())
        }
        _ => None,
    }
}

/// A JWT library's error, whose text may quote the token's (serde's
/// "unknown variant `…`"): its first 256 characters.
fn described(e: &jsonwebtoken::errors::Error) -> String {
    shortened_to(&e.to_string(), 256)
}

fn shortened_to(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Whether two `typ` values name the same media type: RFC 7515 §4.1.9
/// reads a value without `/` as if `application/` were prepended (`at+jwt`
/// is `application/at+jwt`), and media types are compared without regard
/// to case (RFC 9110 §8.3.1). Allocates nothing: it runs per token.
fn same_media_type(a: &str, b: &str) -> bool {
    fn subtype(typ: &str) -> &str {
        match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        }
    }
    subtype(a).eq_ignore_ascii_case(subtype(b))
}

/// A token's claims, refused when a name appears twice (RFC 7519 §4 lets a
/// parser refuse them or take the last; the registered claims are refused
/// by jsonwebtoken's own parsing, so the tenant claim is refused too).
struct UniqueClaims(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<UniqueClaims, A::Error> {
                let mut claims = serde_json::Map::new();
                while let Some((name, value)) = m.next_entry::<String, serde_json::Value>()? {
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom(format!(
                            "claim `{name}` appears twice"
                        )));
                    }
                    claims.insert(name, value);
                }
                Ok(UniqueClaims(claims))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// RFC 7515 §4.1.11: a JWS with extension header parameters listed in
/// `crit` that the recipient does not understand is invalid, and this one
/// understands none (jsonwebtoken ignores the member).
fn refuse_crit(token: &str) -> Result<(), TokenError> {
    use base64::Engine as _;
    let malformed = |what: &str| TokenError::Malformed(what.to_string());
    let header = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| malformed("the header is not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(TokenError::Invalid(
            "the header lists critical extensions (crit), which this verifier does not support"
                .into(),
        ));
    }
    Ok(())
}

/// How a request was (not) recognised.
#[derive(Debug)]
pub enum Unrecognized {
    /// A token is present and does not name a tenant.
    Token(TokenError),
    /// Two sources name different tenants.
    Conflict,
    /// The request's host names a tenant the connection was not made for
    /// (or another tenant's): a client reusing a connection for another
    /// name its certificate covers (421: it retries on a new connection).
    Misdirected,
    /// The connection's server name alone recognised a tenant, and the
    /// request's host is another name, no tenant's (421 too). Said to the
    /// operator: a front that connects with the tenant's name and passes
    /// its public one gets this for every upload until that public name is
    /// one of the tenant's `sni` (review, stop 63).
    NotTheTenantsHost,
}

impl Tenancy {
    /// The tenant a request is for: its token (with tokens on), its client
    /// certificate's names, its server name. `Ok(None)`: no tenant, GeoIP
    /// decides. Allocation-free unless a token is verified (or the
    /// request's host, checked against a tenant's server name, has
    /// upper case).
    /// `host`: the request's authority without its port (`:authority`, an
    /// absolute-form target's or `Host`), checked against the server name.
    pub fn recognize(
        &self,
        sni: Option<&str>,
        host: Option<&str>,
        cert: Option<&CertNames>,
        headers: &HeaderMap,
    ) -> Result<Option<Recognized>, Unrecognized> {
        if self.tenants.is_empty() && self.token.is_none() {
            return Ok(None);
        }
        let token = match self
            .token
            .as_ref()
            .and_then(|v| Some((v, v.token_in(headers)?)))
        {
            Some((verifier, token)) => {
                let name = verifier.verify(token).map_err(Unrecognized::Token)?;
                let id = self.tenants.by_name(&name).ok_or_else(|| {
                    Unrecognized::Token(TokenError::UnknownTenant(shortened(&name)))
                })?;
                Some(id)
            }
            None => None,
        };
        let conflict = |_: Conflict| Unrecognized::Conflict;
        let cert = match cert {
            Some(names) => self.tenants.by_cert(names).map_err(conflict)?,
            None => None,
        };
        let sni_name = sni;
        let sni = sni.and_then(|h| self.tenants.by_sni(h));
        let recognized = tenant::combine(token, cert, sni).map_err(conflict)?;
        // (The server name itself needs no second lookup.)
        let host = host
            .filter(|h| sni_name.is_none_or(|s| !h.trim_end_matches('.').eq_ignore_ascii_case(s)));
        if let Some(host) = host {
            // A host that is a tenant's server name, on a connection made
            // for another name (or none) and not otherwise that tenant's:
            // GeoIP, or another pin, must not decide for its uploads.
            if let Some(by_host) = self.tenants.by_host(host) {
                if recognized.is_none_or(|r| r.tenant != by_host) {
                    return Err(Unrecognized::Misdirected);
                }
            } else if recognized.is_some_and(|r| r.source == tenant::Source::Sni)
                && host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_err()
            {
                // And the mirror: a host name of no tenant on a connection
                // whose server name alone named one — its pin must not
                // decide for another name's uploads (spoofing review, stop
                // 63: an honest client reusing the connection was routed by
                // the pin, and its upload credited to the tenant). An
                // address names nothing: the connection's name stands.
                return Err(Unrecognized::NotTheTenantsHost);
            }
        }
        Ok(recognized)
    }

    /// Loads `[[tenants]]`, `[tenancy] file` and `[tenancy.token]`,
    /// reporting each problem under its key.
    pub fn from_raw(
        raw: Option<&RawTenancy>,
        inline: &[RawTenant],
        base: &Path,
        policy: Option<&Policy>,
        r: &mut ConfigReport,
    ) -> Option<Tenancy> {
        let empty = RawTenancy::default();
        let raw = raw.unwrap_or(&empty);
        let before = r.problems.len();
        let mut files = Vec::new();
        let mut all: Vec<RawTenant> = inline.to_vec();
        let mut keys: Vec<String> = (0..inline.len()).map(|i| format!("tenants[{i}]")).collect();
        let mut empty_file = None;
        if let Some(path) = &raw.file {
            let resolved = base.join(path);
            files.push(resolved.clone());
            if let Some(more) = load_tenants_file(&resolved, r) {
                if more.is_empty() {
                    empty_file = Some(resolved.clone());
                }
                let file = resolved.display().to_string();
                keys.extend((0..more.len()).map(|i| format!("{file}: tenants[{i}]")));
                all.extend(more);
            }
        }
        // Keys per entry: the inline ones are `tenants[i]`; the file's are
        // named with the file.
        // Each part checked whatever the others found: every problem at once.
        let tenants = Tenants::from_raw(&all, |i| keys[i].clone(), policy, r);
        let token = raw.token.as_ref().and_then(|t| {
            let verifier = token_verifier(t, base, r, &mut files)?;
            Some(Arc::new(verifier))
        });
        let none = Tenants::default();
        let record_names =
            record_names(raw, tenants.as_ref().unwrap_or(&none), base, r, &mut files);
        let (tenants, (record_names, record_names_by_server_name)) = (tenants?, record_names?);
        (r.problems.len() == before).then(|| Tenancy {
            tenants,
            token,
            record_names,
            record_names_by_server_name,
            record_by_default: raw.record.is_none(),
            metrics_by_tenant: raw.metrics_by_tenant.unwrap_or(false),
            files,
            record_hmac_key_file: raw.record_hmac_key.as_deref().map(|p| base.join(p)),
            empty_file,
        })
    }
}

impl Tenancy {
    /// Logs a warning for each tenant any client can claim (see
    /// [`Tenants::claimable_by_server_name`]) and each key the token key
    /// set leaves out: when `serve` starts and when a reload is taken (not
    /// at `Config::load`, which runs before the log is set up — the key
    /// set's were lost so at start (config audit, stop 63) —, and also for
    /// a reload that is then refused).
    pub fn log_warnings(&self) {
        for warning in self.claimable_warnings() {
            tracing::warn!("{warning}");
        }
        for warning in self.token.iter().flat_map(|t| &t.warnings) {
            tracing::warn!("{warning}");
        }
    }
}

impl Tenancy {
    /// The claimable tenants' warnings, as `check-config` prints them and
    /// `serve` logs them: the first [`CLAIMABLE_SAID`] one by one, then one
    /// line for the rest (10,000 such tenants gave 10,000 lines at every
    /// start and reload, burying the rest: scale audit, stop 65).
    pub fn claimable_warnings(&self) -> Vec<String> {
        let claimable = self.tenants.claimable_by_server_name();
        let mut lines: Vec<String> = claimable
            .iter()
            .take(CLAIMABLE_SAID)
            .map(|(tenant, names)| {
                format!("{} (sni {})", claimable_warning(tenant), names.join(", "))
            })
            .collect();
        if claimable.len() > CLAIMABLE_SAID {
            lines.push(format!(
                "and {} more tenants recognised by a server name with mismatch \"allow\" ({} in all): the same holds for each",
                claimable.len() - CLAIMABLE_SAID,
                claimable.len()
            ));
        }
        lines
    }
}

/// Claimable tenants named one by one in the warnings.
const CLAIMABLE_SAID: usize = 10;

/// What a tenant that any client can claim is told (in the log, and by
/// `check-config`): see [`Tenants::claimable_by_server_name`].
pub fn claimable_warning(tenant: &str) -> String {
    format!(
        "tenant `{tenant}` is recognised by a server name, which any client can send, \
         and its mismatch is \"allow\": any client naming it is routed by its pin \
         wherever GeoIP places it; where identity matters, recognise it by client_cert \
         or token, or set mismatch"
    )
}

/// The tenants of the file `tenancy.file` names, or its problems in `r`:
/// every unknown key of it at once, each named as its entries are (`FILE:
/// tenants[1].jurisdictoin: unknown key, expected one of …`), as the
/// configuration's are (a file with three misspelt keys took three runs of
/// `check-config`: config audit); what concerns the whole file (it cannot
/// be read, it is not TOML) under `tenancy.file`.
fn load_tenants_file(path: &Path, r: &mut ConfigReport) -> Option<Vec<RawTenant>> {
    let file = path.display().to_string();
    // The `config` crate says "not found" of one that is there.
    if let Some(problem) = residency_core::report::not_a_file(path) {
        r.push("tenancy.file", format!("{file}: {problem}"));
        return None;
    }
    let loaded = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<RawTenantsFile>());
    match loaded {
        Ok(raw) => Some(raw.tenants),
        Err(e) => {
            let text = std::fs::read_to_string(path).ok();
            let report = crate::config_source::deserialize_failed::<RawTenantsFile>(
                &file,
                "tenancy.file",
                text.as_deref(),
                None,
                &e,
            );
            for problem in report.problems {
                if problem.key == "tenancy.file" {
                    r.push("tenancy.file", format!("{file}: {}", problem.message));
                } else {
                    r.push(format!("{file}: {}", problem.key), problem.message);
                }
            }
            None
        }
    }
}

fn token_verifier(
    raw: &RawToken,
    base: &Path,
    r: &mut ConfigReport,
    files: &mut Vec<PathBuf>,
) -> Option<TokenVerifier> {
    let before = r.problems.len();
    let header_name = raw.header.as_deref().unwrap_or("authorization");
    let header = match HeaderName::from_bytes(header_name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            r.push(
                "tenancy.token.header",
                format!("`{header_name}` is not a header name"),
            );
            None
        }
    };
    let mut required = |value: &Option<String>, key: &str, what: &str| {
        if value.as_deref().is_none_or(str::is_empty) {
            r.push(format!("tenancy.token.{key}"), format!("required: {what}"));
        }
        value.clone().unwrap_or_default()
    };
    let issuer = required(&raw.issuer, "issuer", "the `iss` tokens must carry");
    let audience = required(&raw.audience, "audience", "the `aud` tokens must carry");
    let leeway = raw
        .leeway
        .check_or(Duration::from_secs(60), "tenancy.token.leeway", r);
    if leeway > Duration::from_secs(600) || leeway.subsec_nanos() != 0 {
        r.push(
            "tenancy.token.leeway",
            "must be whole seconds, at most 10m (RFC 8725: clock skew of minutes, not more)",
        );
    }
    let typ = raw.typ.as_deref().map(|typ| {
        // A media type's name: a token, one `/` at most, then a token
        // (RFC 6838 §4.2's characters); no parameters.
        let restricted = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !typ.split('/').all(restricted) || typ.matches('/').count() > 1 {
            r.push(
                "tenancy.token.typ",
                format!("`{typ}` is not a media type name (like `at+jwt` or `application/at+jwt`)"),
            );
        }
        typ.to_string()
    });
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    let mut skip_all = None;
    match raw.jwks.as_deref() {
        None => r.push(
            "tenancy.token.jwks",
            "required: a JWKS file of the token issuer's public keys",
        ),
        Some(path) => {
            let resolved = base.join(path);
            files.push(resolved.clone());
            match std::fs::read(&resolved)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<KeySet>(&b).map_err(|e| e.to_string()))
            {
                Err(e) => r.push("tenancy.token.jwks", format!("{}: {e}", resolved.display())),
                Ok(set) => {
                    // A key set may hold keys this proxy does not verify
                    // with (RSA, encryption keys, another algorithm): they
                    // are left out, not a reason to keep the old set (an
                    // issuer rotating in an RSA key, or emptying its set to
                    // revoke every key, must take effect).
                    let jwks = resolved.display();
                    let mut skip = |i: usize, why: &str| {
                        warnings.push(format!(
                            "tenancy.token.jwks: {jwks}: key {i}: {why}: the key is not used"
                        ));
                    };
                    if set.keys.is_empty() {
                        skip_all = Some(format!(
                            "tenancy.token.jwks: {jwks}: the key set is empty: every token is refused"
                        ));
                    }
                    let mut secrets = Vec::new();
                    for (i, value) in set.keys.into_iter().enumerate() {
                        // A private or secret key in a set meant to hold
                        // public ones: the issuer's signing key is then on
                        // this host, and whoever reads the file can sign a
                        // token for any tenant (privacy audit, stop 68:
                        // taken, or left out, without a word).
                        if let Some(secret) = ["d", "k", "p", "q"]
                            .into_iter()
                            .find(|m| value.get(m).is_some())
                        {
                            secrets.push(format!(
                                "tenancy.token.jwks: {jwks}: key {i} holds private or secret key material (`{secret}`): anyone who can read this file can sign tokens for every tenant; give the proxy the public keys only"
                            ));
                        }
                        // One by one: a key of a type, curve or algorithm
                        // the JWK reader does not know (an X25519 or
                        // ECDH-ES key) fails alone (RFC 7517 §5: ignored).
                        let jwk = match serde_json::from_value::<Jwk>(value) {
                            Ok(jwk) => jwk,
                            Err(e) => {
                                skip(i, &format!("it is not a key this proxy reads ({e})"));
                                continue;
                            }
                        };
                        let jwk = &jwk;
                        let alg = match &jwk.algorithm {
                            AlgorithmParameters::OctetKeyPair(p)
                                if p.curve == EllipticCurve::Ed25519 =>
                            {
                                Algorithm::EdDSA
                            }
                            AlgorithmParameters::EllipticCurve(p)
                                if p.curve == EllipticCurve::P256 =>
                            {
                                Algorithm::ES256
                            }
                            _ => {
                                skip(i, "only Ed25519 (OKP, EdDSA) and P-256 (EC, ES256) keys are accepted");
                                continue;
                            }
                        };
                        // RFC 7517 §4.2–4.4: a key marked for another use,
                        // other operations or another algorithm does not
                        // verify tokens.
                        let common = &jwk.common;
                        if common
                            .public_key_use
                            .as_ref()
                            .is_some_and(|u| *u != PublicKeyUse::Signature)
                        {
                            skip(i, "its `use` is not `sig`");
                            continue;
                        }
                        if common
                            .key_operations
                            .as_ref()
                            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
                        {
                            skip(i, "its `key_ops` do not include `verify`");
                            continue;
                        }
                        let named = match alg {
                            Algorithm::EdDSA => KeyAlgorithm::EdDSA,
                            _ => KeyAlgorithm::ES256,
                        };
                        if common.key_algorithm.is_some_and(|a| a != named) {
                            skip(i, "its `alg` is not its curve's algorithm");
                            continue;
                        }
                        if let Some(why) = unusable_point(&jwk.algorithm) {
                            skip(i, &why);
                            continue;
                        }
                        match DecodingKey::from_jwk(jwk) {
                            Ok(key) => {
                                let mut validation = Validation::new(alg);
                                validation.set_issuer(&[issuer.as_str()]);
                                validation.set_audience(&[audience.as_str()]);
                                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                                validation.validate_nbf = true;
                                validation.leeway = leeway.as_secs();
                                keys.push(Key {
                                    kid: jwk.common.key_id.clone(),
                                    alg,
                                    key,
                                    validation,
                                });
                            }
                            // Its coordinates do not decode (padded or
                            // not base64url): unusable, left out like the
                            // others, so the rest of the set applies.
                            Err(e) => skip(i, &format!("its key material does not decode ({e})")),
                        }
                    }
                    warnings.extend(secrets);
                    // With several keys, one without `kid` is never chosen
                    // (`verify`): left out, saying so.
                    if keys.len() > 1 {
                        keys.retain(|k| {
                            if k.kid.is_none() {
                                warnings.push(format!("tenancy.token.jwks: {jwks}: a key without `kid` in a set of several: the key is not used"));
                            }
                            k.kid.is_some()
                        });
                    }
                    if keys.is_empty() && skip_all.is_none() {
                        skip_all = Some(format!(
                            "tenancy.token.jwks: {jwks}: no key in the set is usable: every token is refused"
                        ));
                    }
                    warnings.extend(skip_all);
                }
            }
        }
    }
    let claim = raw.claim.clone().unwrap_or_else(|| "tenant".into());
    (r.problems.len() == before).then(|| TokenVerifier {
        header: header.expect("checked"),
        bearer: header_name.eq_ignore_ascii_case("authorization"),
        claim,
        keys,
        typ,
        warnings,
    })
}

impl Tenancy {
    /// The name a record gives tenant `id`, recognised by `source`. Under
    /// `record = "hmac"`, one recognised by its server name alone gets a
    /// hash of its own: anyone can send that name (and so learn the hash
    /// from the record of an upload of their own), and that must not name
    /// the hash its certificate- and token-recognised records carry.
    pub fn record_name(&self, id: TenantId, source: Source) -> &str {
        let names = match source {
            Source::Sni => &self.record_names_by_server_name,
            Source::ClientCert | Source::Token => &self.record_names,
        };
        names.get(id.0 as usize).map_or("?", String::as_str)
    }
}

/// Per tenant id, the names its records carry: when a certificate or token
/// recognised it, and when its server name alone did.
type RecordNames = (Vec<String>, Vec<String>);

fn record_names(
    raw: &RawTenancy,
    tenants: &Tenants,
    base: &Path,
    r: &mut ConfigReport,
    files: &mut Vec<PathBuf>,
) -> Option<RecordNames> {
    match raw.record.as_deref().unwrap_or("name") {
        // A key given for a mode not chosen would look like protection
        // that is not there: the names would go into the log in clear.
        "name" if raw.record_hmac_key.is_some() => {
            r.push(
                "tenancy.record_hmac_key",
                "set, but tenancy.record is \"name\": tenant names are recorded in clear; set record = \"hmac\" (or remove the key)",
            );
            None
        }
        "name" => {
            let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
            Some((names.clone(), names))
        }
        "hmac" => {
            let Some(path) = raw.record_hmac_key.as_deref() else {
                r.push(
                    "tenancy.record_hmac_key",
                    "required with record = \"hmac\": a file of at least 32 secret bytes",
                );
                return None;
            };
            let resolved = base.join(path);
            files.push(resolved.clone());
            match std::fs::read(&resolved) {
                Ok(key) if key.len() >= 32 => {
                    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
                    let hashed = |prefix: &str| {
                        tenants
                            .iter()
                            .map(|t| {
                                // (A name has no `:`: the two inputs never meet.)
                                let tag = ring::hmac::sign(
                                    &key,
                                    format!("{prefix}{}", t.name).as_bytes(),
                                );
                                format!(
                                    "hmac-sha256:{}",
                                    residency_core::hex::encode(&tag.as_ref()[..16])
                                )
                            })
                            .collect()
                    };
                    Some((hashed(""), hashed("sni:")))
                }
                Ok(_) => {
                    r.push(
                        "tenancy.record_hmac_key",
                        format!("{}: fewer than 32 bytes", resolved.display()),
                    );
                    None
                }
                Err(e) => {
                    r.push(
                        "tenancy.record_hmac_key",
                        format!("{}: {e}", resolved.display()),
                    );
                    None
                }
            }
        }
        other => {
            r.push(
                "tenancy.record",
                format!("`{other}` is not one of \"name\", \"hmac\""),
            );
            None
        }
    }
}

/// The names in a client certificate (DER): SAN URIs and DNS names
/// (lowercased, without trailing dots) and the subject's CN. Read once per
/// connection. A certificate (verified by the TLS stack, which reads its
/// names only under a name constraint) whose subject alternative names or
/// CN do not decode here is marked `unreadable`, not taken for one without
/// names.
pub fn cert_names(der: &[u8]) -> CertNames {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let mut names = CertNames::default();
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        names.unreadable = true;
        return names;
    };
    let tbs = &cert.tbs_certificate;
    match tbs.get::<SubjectAltName>() {
        Ok(Some((_, san))) => {
            for name in san.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(uri) => names.uris.push(uri.to_string()),
                    // Compared as a server name is (`Tenants::by_host`):
                    // without case, and without trailing dots — a fully
                    // qualified `name.` is the name (a CA may write it so).
                    GeneralName::DnsName(dns) => {
                        let dns = dns.to_string();
                        names
                            .dns
                            .push(dns.trim_end_matches('.').to_ascii_lowercase());
                    }
                    _ => {}
                }
            }
        }
        Ok(None) => {}
        Err(_) => names.unreadable = true,
    }
    let cn_oid = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    let mut cns = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == cn_oid);
    let cn = cns.next();
    // A subject with several CNs: which one names the client is a matter of
    // taste (RFC 2818 takes the most specific, Go the last, others the
    // first), so it names no one for sure; unreadable, as an undecodable
    // CN is (a 403 while tenants are recognised by certificate).
    if cns.next().is_some() {
        names.unreadable = true;
        return names;
    }
    if let Some(atv) = cn {
        names.cn = atv.value.decode_as::<String>().ok().or_else(|| {
            atv.value
                .decode_as::<x509_cert::der::asn1::PrintableStringRef<'_>>()
                .ok()
                .map(|s| s.to_string())
        });
        names.unreadable |= names.cn.is_none();
    }
    names
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// A configuration without tenants (its files hold nothing: the
    /// values are refused before they are read).
    use crate::config::tests::MINIMAL as BASE;

    /// A tenant in the tenant file that overlaps one in the configuration:
    /// the problem names the file's entry, and the other side.
    #[test]
    fn overlaps_across_the_file_name_both_entries() {
        let dir = std::env::temp_dir().join(format!("rp-tenancy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["c.pem", "c.key", "g.mmdb"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(
            dir.join("tenants file.toml"),
            "[[tenants]]\nname = \"b\"\njurisdiction = \"ch\"\nsni = [\"x.acme.example\"]\n",
        )
        .unwrap();
        let toml = format!(
            "{BASE}[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\nsni = [\"*.acme.example\"]\n\
             [tenancy]\nfile = \"tenants file.toml\"\n"
        );
        let report = Config::from_toml(&toml, &dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("tenants file.toml").display().to_string();
        assert!(
            report.contains(&format!(
                "- {file}: tenants[0].sni[0]: `x.acme.example` is also matched by sni `*.acme.example` of tenants[0].sni[0] (tenant `a`)"
            )),
            "{report}"
        );
    }

    /// A server name that is an IP address is refused: TLS never sends
    /// one, so the tenant could never be recognised (it loaded, and
    /// `/decide?sni=127.0.0.1` pinned a tenant no connection could have).
    #[test]
    fn a_server_name_that_is_an_address_is_refused() {
        let dir = std::env::temp_dir().join(format!("rp-tenancy-ip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["c.pem", "c.key", "g.mmdb"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let toml = format!(
            "{BASE}[[tenants]]\nname = \"a\"\njurisdiction = \"ch\"\n\
             sni = [\"127.0.0.1\", \"ingest.acme.example\", \"10.1.2\"]\n"
        );
        let report = Config::from_toml(&toml, &dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            report.contains("tenants[0].sni[0]: `127.0.0.1` is an IP address, which TLS never sends as a server name"),
            "{report}"
        );
        assert!(!report.contains("sni[1]"), "{report}");
        assert!(!report.contains("sni[2]"), "a name of digits: {report}");
    }

    /// What a token brought reaches the log shortened to 64 characters.
    #[test]
    fn a_token_s_values_are_shortened_for_the_log() {
        assert_eq!(super::shortened("ed1"), "ed1");
        let long = "é".repeat(64);
        assert_eq!(super::shortened(&long), long);
        let longer = super::shortened(&format!("{long}x{}", "k".repeat(4000)));
        assert_eq!(longer, format!("{long}…"));
        // The JWT library's words about a header quote its text.
        let verifier = super::TokenVerifier {
            header: http::header::AUTHORIZATION,
            bearer: true,
            claim: "tenant".into(),
            keys: Vec::new(),
            typ: None,
            warnings: Vec::new(),
        };
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for header in [
            format!(r#"{{"alg":"{}"}}"#, "A".repeat(5000)),
            format!(r#"{{"alg":"EdDSA","x5c":"{}"}}"#, "A".repeat(5000)),
        ] {
            let token = format!("{}.{}.", b64(&header), b64("{}"));
            let why = format!("{:?}", verifier.verify(&token).unwrap_err());
            assert!(why.len() < 400, "{} characters: {why}", why.len());
        }
    }

    /// A key whose point cannot be trusted is found before it is used:
    /// Ed25519's small-order points (a forged signature verifies: JOSE
    /// audit, stop 69) and wrong lengths, P-256 points off the curve.
    #[test]
    fn a_key_whose_point_cannot_be_trusted_is_found() {
        use jsonwebtoken::jwk::{
            AlgorithmParameters, EllipticCurve, EllipticCurveKeyParameters, OctetKeyPairParameters,
            OctetKeyPairType,
        };
        let ed = |x: &str| {
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: x.into(),
            })
        };
        let ec = |x: &str, y: &str| {
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: jsonwebtoken::jwk::EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: x.into(),
                y: y.into(),
            })
        };
        for (x, why) in [
            ("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "small-order"), // identity
            ("7P_______________________________________38", "small-order"), // order 2
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not 32 bytes"),
        ] {
            let said = super::unusable_point(&ed(x)).unwrap();
            assert!(said.contains(why), "{x}: {said}");
        }
        assert_eq!(
            super::unusable_point(&ed("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")),
            None
        );
        assert_eq!(
            super::unusable_point(&ed("not base64!")),
            None,
            "said by from_jwk"
        );
        // A real P-256 key's point, and one off the curve.
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let point = pair.public_key().as_ref();
        let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
        assert_eq!(super::unusable_point(&ec(&x, &y)), None);
        let mut off = point[33..].to_vec();
        off[31] ^= 1;
        let said = super::unusable_point(&ec(&x, &b64(&off))).unwrap();
        assert!(said.contains("not on the P-256 curve"), "{said}");
        let said = super::unusable_point(&ec(&x, &b64(&off[1..]))).unwrap();
        assert!(said.contains("not 32 bytes each"), "{said}");
    }

    /// What a JWT sent without its scheme looks like, and what another
    /// scheme's credentials do not.
    #[test]
    fn a_bare_jws_is_told_from_other_credentials() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jws = |header: &str| format!("{}.{}.c2ln", b64(header), b64("{}"));
        for bare in [
            jws(r#"{"alg":"EdDSA"}"#),
            jws(r#" { "alg":"EdDSA"}"#),
            format!("{};", jws(r#"{"alg":"EdDSA"}"#)),
            format!("{}=", jws(r#"{"alg":"EdDSA"}"#)),
        ] {
            assert!(super::looks_like_a_jws(&bare), "{bare}");
        }
        for other in [
            "Basic dXM6cHc=",
            "abc.def.ghi",
            "Digest realm=\"a.b.c\"",
            "a.b",
            "",
        ] {
            assert!(!super::looks_like_a_jws(other), "{other}");
        }
        assert!(
            !super::looks_like_a_jws(&format!("{}.x", jws("{}"))),
            "four parts"
        );
    }

    /// `typ` values name media types: `application/` is implied without
    /// a `/` (RFC 7515 §4.1.9), and case does not matter.
    #[test]
    fn a_token_type_is_read_as_the_media_type_it_names() {
        for same in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            assert!(super::same_media_type(same, "application/at+jwt"), "{same}");
            assert!(super::same_media_type("at+jwt", same), "{same}");
        }
        assert!(super::same_media_type("JWT", "application/jwt"));
        assert!(!super::same_media_type("JWT", "at+jwt"));
        assert!(!super::same_media_type("example/at+jwt", "at+jwt"));
        assert!(super::same_media_type("example/at+jwt", "Example/AT+JWT"));
    }

    /// The problems `Config::from_toml` reports for a minimal configuration
    /// whose `[tenancy.token]` has `line` besides its required keys.
    fn token_config_problems(name: &str, line: &str) -> String {
        let dir = std::env::temp_dir().join(format!("rp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["c.pem", "c.key", "g.mmdb"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let toml = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"c.pem\", key = \"c.key\" }}]\n\
             [geoip]\ndatabase = \"g.mmdb\"\n[jurisdictions.ch]\ncountries = [\"CH\"]\n\
             [datacenters.zurich]\njurisdiction = \"ch\"\nupstreams = [\"http://127.0.0.1:1\"]\n\
             [tenancy.token]\nissuer = \"i\"\naudience = \"a\"\njwks = \"none.json\"\n{line}\n"
        );
        let report = Config::from_toml(&toml, &dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        report
    }

    /// A required `typ` that is not a media type name is refused, naming
    /// the key.
    #[test]
    fn a_token_type_that_is_not_a_media_type_is_refused() {
        for typ in ["", "at jwt", "a/b/c", "at+jwt; v=1", "/jwt"] {
            let report = token_config_problems("typ", &format!("typ = \"{typ}\""));
            assert!(
                report.contains(&format!(
                    "tenancy.token.typ: `{typ}` is not a media type name"
                )),
                "{typ:?}: {report}"
            );
        }
    }

    /// A clock-skew allowance of hours (or of a fraction of a second, which
    /// jsonwebtoken would cut) is refused, naming the key.
    #[test]
    fn a_leeway_beyond_minutes_is_refused() {
        for leeway in ["2h", "1500ms"] {
            let report = token_config_problems("leeway", &format!("leeway = \"{leeway}\""));
            assert!(
                report.contains("tenancy.token.leeway: must be whole seconds, at most 10m"),
                "{leeway}: {report}"
            );
        }
    }

    /// A certificate with subject alternative names that do not decode
    /// (an IA5String URI holding a byte outside ASCII, which the TLS stack
    /// accepts unread) is marked unreadable, not taken for one without
    /// names: GeoIP would then have decided for a tenant's device.
    #[test]
    fn a_certificate_whose_names_do_not_decode_is_unreadable() {
        let der = |san: Option<Vec<u8>>| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "device-7");
            if let Some(san) = san {
                params
                    .custom_extensions
                    .push(rcgen::CustomExtension::from_oid_content(
                        &[2, 5, 29, 17],
                        san,
                    ));
            }
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        // GeneralNames: [6] URIs, DER by hand.
        let san = |uris: &[&[u8]]| {
            let mut inner = Vec::new();
            for uri in uris {
                inner.extend([0x86, uri.len() as u8]);
                inner.extend_from_slice(uri);
            }
            let mut seq = vec![0x30, inner.len() as u8];
            seq.extend(inner);
            seq
        };
        let good = super::cert_names(&der(Some(san(&[b"spiffe://acme.test/devices/7"]))));
        assert_eq!(good.uris, ["spiffe://acme.test/devices/7"]);
        assert_eq!(good.cn.as_deref(), Some("device-7"));
        assert!(!good.unreadable);
        let bad = super::cert_names(&der(Some(san(&[
            b"spiffe://acme.test/devices/7",
            b"urn:x:\xc9",
        ]))));
        assert!(bad.unreadable, "{bad:?}");
        assert!(super::cert_names(b"not a certificate").unreadable);
        assert!(!super::cert_names(&der(None)).unreadable);
    }

    /// A subject with two CNs names no one for sure (RFC 2818 reads the
    /// most specific, Go the last): unreadable, not its first CN's.
    #[test]
    fn a_certificate_with_two_common_names_is_unreadable() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "globex-uploader");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme-uploader");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let one = super::cert_names(&der);
        assert_eq!(one.cn.as_deref(), Some("globex-uploader"));
        assert!(!one.unreadable);
        // The organisation's OID (2.5.4.10) made a second CN (2.5.4.3);
        // names are read, not verified, so the signature does not matter.
        let (o, cn) = (
            [0x06, 0x03, 0x55, 0x04, 0x0a],
            [0x06, 0x03, 0x55, 0x04, 0x03],
        );
        let mut two = der.clone();
        let mut at = 0;
        while let Some(i) = two[at..].windows(5).position(|w| w == o) {
            two[at + i..at + i + 5].copy_from_slice(&cn);
            at += i + 5;
        }
        assert_ne!(two, der);
        let names = super::cert_names(&two);
        assert!(names.unreadable, "{names:?}");
    }
}
