//! TLS configuration for both sides of the proxy, and for its tools.
//!
//! This crate owns every rustls decision so the rest of the workspace never has
//! to make one: the single crypto provider (ring, always passed explicitly,
//! never the process-wide default), the protocol versions (TLS 1.2 and 1.3),
//! PEM loading with errors that name the offending file, the listener's
//! [`ServerConfig`] (SNI-based certificate choice with a default certificate,
//! ALPN, no 0-RTT, optional mTLS) and the upstream [`ClientConfig`].
//!
//! SNI matching uses rustls' own webpki name check
//! ([`verify_server_name`]), so wildcard and case rules are exactly those a
//! client applies; no extra dependency or hand-written DER parsing is needed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};

static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider used by every config built here: ring.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    Arc::clone(&PROVIDER)
}

/// Errors building TLS configuration. The first field is the file (or
/// source) concerned; each message is self-contained (it includes the cause
/// rather than chaining it via `source()`), so logging it with `{}` suffices.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: invalid PEM: {1}")]
    Pem(String, pem::Error),
    #[error("{0}: no certificate found")]
    NoCertificate(String),
    #[error("{0}: no private key found")]
    NoPrivateKey(String),
    #[error("{0}: the private key is encrypted, which is not supported: give it unencrypted, readable by the proxy only (`openssl pkey -in KEY -out KEY.plain`, then chmod 600)")]
    EncryptedKey(String),
    /// (ring's signers: RSA of 2048 to 8192 bits, ECDSA P-256 and P-384,
    /// Ed25519.)
    #[error(
        "{0}: unusable private key: {1} (keys taken: RSA of 2048 to 8192 bits, ECDSA P-256 or P-384, Ed25519)"
    )]
    BadKey(String, rustls::Error),
    #[error("{0}: unusable certificate: {1}")]
    BadCertificate(String, rustls::Error),
    /// (key label, certificate label)
    #[error("{0}: private key does not match certificate {1}")]
    KeyMismatch(String, String),
    #[error("no server certificates configured")]
    NoServerCertificates,
    #[error("{0}: no CA certificates")]
    NoCaCertificates(String),
    #[error("{0}: invalid CA certificate: {1}")]
    BadCa(String, rustls::Error),
    #[error("{0}: no CRL found (PEM \"X509 CRL\" blocks expected)")]
    NoCrl(String),
    #[error("{0}: a CRL of {1} has no extensions (a version 1 CRL, without the CRL number RFC 5280 §5.2.3 requires), which rustls cannot read (`openssl ca -gencrl` makes a version 2 one with a number when its configuration names a `crlnumber` file)")]
    CrlWithoutNumber(String, String),
    #[error("cannot build the client certificate verifier from client_ca and client_crl: {0}")]
    ClientVerifier(VerifierBuilderError),
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("generating self-signed certificate: {0}")]
    SelfSigned(rcgen::Error),
}

/// A certificate chain and its private key, both PEM, plus a label (usually
/// the certificate path) used in error messages.
#[derive(Clone, Debug)]
pub struct CertSource {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub label: String,
}

/// What a certificate says of itself that decides whether peers take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
    /// `basicConstraints` says `cA`: a CA's certificate, which rustls
    /// (webpki) refuses as a server's own.
    pub ca: bool,
}

/// [`Validity`] of each certificate of a PEM bundle that parses, in order
/// (a chain's first is the server's own).
pub fn validity(pem: &[u8]) -> Vec<Validity> {
    use x509_cert::der::Decode as _;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
        .map(|cert| {
            let tbs = &cert.tbs_certificate;
            let at = |t: x509_cert::time::Time| std::time::UNIX_EPOCH + t.to_unix_duration();
            let ca = tbs
                .get::<x509_cert::ext::pkix::BasicConstraints>()
                .ok()
                .flatten()
                .is_some_and(|(_, bc)| bc.ca);
            Validity {
                not_before: at(tbs.validity.not_before),
                not_after: at(tbs.validity.not_after),
                ca,
            }
        })
        .collect()
}

/// When the first certificate of a PEM chain (the server's own) stops
/// being valid (its `notAfter`), if it parses.
pub fn not_after(cert_pem: &[u8]) -> Option<std::time::SystemTime> {
    validity(cert_pem).first().map(|v| v.not_after)
}

/// [`refusal_hint`] for the first [`rustls::Error`] in `e`'s chain of
/// sources (through the `io::Error`s that carry it).
pub fn refusal_hint_in(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    error_chain(e)
        .find_map(|err| err.downcast_ref::<rustls::Error>())
        .and_then(refusal_hint)
}

/// The errors behind `e`, outermost first. An `io::Error` wrapping another
/// error is followed into that error (its `source()` would skip it).
pub fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    fn next<'a>(
        err: &&'a (dyn std::error::Error + 'static),
    ) -> Option<&'a (dyn std::error::Error + 'static)> {
        match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    }
    std::iter::successors(Some(e), next)
}

/// What to do about a certificate a TLS client refused, when rustls's
/// words (webpki's error names) do not say: `None` for the rest.
pub fn refusal_hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::CertificateError;
    let rustls::Error::InvalidCertificate(e) = e else {
        return None;
    };
    match e {
        CertificateError::UnknownIssuer => Some(
            "the server's certificate is not issued by a CA this client trusts: give the CA that issued it (or, for a self-signed one, the certificate itself) as the trusted CA file",
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => Some(
            "the server's certificate does not name the host asked for: connect by a name (or IP address) in its subjectAltName",
        ),
        // webpki's CaUsedAsEndEntity, which rustls passes on as Other.
        CertificateError::Other(other) if other.to_string() == "CaUsedAsEndEntity" => Some(
            "the server's certificate is a CA's (basicConstraints CA:TRUE, as `openssl req -x509` makes by default), which rustls refuses as a server's own: make it with `-addext basicConstraints=critical,CA:FALSE`, or have a CA issue it and trust that CA",
        ),
        _ => None,
    }
}

/// Reads a certificate chain and key from disk and checks that they parse and
/// belong together, so that problems are reported with both file names.
pub fn load_cert_source(cert: &Path, key: &Path) -> Result<CertSource, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.display().to_string(), e));
    let source = CertSource {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        label: cert.display().to_string(),
    };
    certified_key(&source, &key.display().to_string())?;
    Ok(source)
}

/// Parses a [`CertSource`] into a signing-ready [`CertifiedKey`], checking
/// that the private key matches the end-entity certificate.
fn certified_key(source: &CertSource, key_label: &str) -> Result<CertifiedKey, TlsError> {
    let (label, key_label) = (source.label.clone(), key_label.to_owned());
    let chain = CertificateDer::pem_slice_iter(&source.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(label.clone(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(label));
    }
    // PKCS#8's `ENCRYPTED PRIVATE KEY`, or an OpenSSL traditional key with
    // `Proc-Type: 4,ENCRYPTED` (whose headers fail the PEM parse first): a
    // key, just not one to read.
    let text = String::from_utf8_lossy(&source.key_pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(TlsError::EncryptedKey(key_label));
    }
    let key = match PrivateKeyDer::from_pem_slice(&source.key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoPrivateKey(key_label)),
        Err(e) => return Err(TlsError::Pem(key_label, e)),
    };
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey(key_label.clone(), e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot report its public key; nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch(key_label, label))
        }
        Err(e) => Err(TlsError::BadCertificate(label, e)),
    }
}

/// Client certificates a server requires (mTLS).
pub struct ClientAuth<'a> {
    /// PEM CA bundle the certificates must chain to.
    pub ca_pem: &'a [u8],
    /// The bundle's label for errors (usually its path).
    pub ca_label: &'a str,
    /// PEM files of CRLs (each with its label for errors); a certificate
    /// they revoke is refused.
    pub crls: &'a [(String, Vec<u8>)],
}

/// The CRLs of `files`, the newest of each scope only. rustls checks a
/// certificate against the first CRL of its issuer (and distribution
/// point), so an older CRL ahead of a newer one in the file — a new CRL
/// appended to the old — would hide every revocation made since: of CRLs
/// with the same issuer, issuing distribution point and authority key
/// identifier, only the one with
/// the highest CRL number (else the latest `thisUpdate`) is kept, and the
/// others are named in a warning.
fn crls(
    files: &[(String, Vec<u8>)],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut kept: Vec<(Option<Crl>, CertificateRevocationListDer<'static>)> = Vec::new();
    for (label, pem) in files {
        let found = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(label.clone(), e))?;
        if found.is_empty() {
            return Err(TlsError::NoCrl(label.clone()));
        }
        for der in found {
            // One that does not parse here is refused by rustls with its
            // own error — but for a version 1 CRL, which has no version
            // field x509-cert would read (audits, stop 64: "ParseError").
            let crl = Crl::parse(&der);
            if crl.is_none() {
                if let Some(issuer) = version_1_issuer(&der) {
                    return Err(TlsError::CrlWithoutNumber(
                        label.clone(),
                        issuer.to_string(),
                    ));
                }
            }
            if let Some(crl) = &crl {
                if crl.version_1 {
                    return Err(TlsError::CrlWithoutNumber(
                        label.clone(),
                        crl.issuer.to_string(),
                    ));
                }
                warn_if_expired(label, crl);
            }
            let same = crl.as_ref().and_then(|crl| {
                kept.iter()
                    .position(|(k, _)| k.as_ref().is_some_and(|k| k.scope == crl.scope))
            });
            match (same, crl) {
                (Some(i), Some(crl)) => {
                    let supersedes = kept[i].0.as_ref().is_some_and(|k| crl.newer_than(k));
                    let ignored = if supersedes {
                        std::mem::replace(&mut kept[i], (Some(crl), der)).0
                    } else {
                        Some(crl)
                    };
                    if let Some(ignored) = ignored {
                        tracing::warn!(
                            file = label,
                            issuer = %ignored.issuer,
                            this_update = %ignored.this_update,
                            "client_crl: an older CRL of the same issuer is ignored; the newest (highest CRL number, else latest thisUpdate) is used"
                        );
                    }
                }
                (_, crl) => kept.push((crl, der)),
            }
        }
    }
    Ok(kept.into_iter().map(|(_, der)| der).collect())
}

/// The issuer of a version 1 CRL (RFC 5280 §5.1: `tbsCertList` without its
/// optional `version`, so opening with the `signature` algorithm's
/// SEQUENCE rather than an INTEGER); `None` for any other DER.
fn version_1_issuer(der: &[u8]) -> Option<x509_cert::name::Name> {
    use x509_cert::der::{asn1::AnyRef, Decode as _, Reader as _, SliceReader, Tag, Tagged as _};
    let list = AnyRef::from_der(der).ok()?;
    let mut list = SliceReader::new(list.value()).ok()?;
    let tbs = list.decode::<AnyRef<'_>>().ok()?;
    if tbs.tag() != Tag::Sequence {
        return None;
    }
    let mut tbs = SliceReader::new(tbs.value()).ok()?;
    let signature = tbs.decode::<AnyRef<'_>>().ok()?;
    if signature.tag() != Tag::Sequence {
        return None;
    }
    tbs.decode::<x509_cert::name::Name>().ok()
}

/// What decides which of two CRLs is current.
struct Crl {
    issuer: x509_cert::name::Name,
    /// The issuer's DER, the issuing distribution point's and the
    /// authority key identifier's (a CA re-keyed under its old name signs
    /// CRLs of its own): a CRL supersedes only one of the same scope.
    scope: (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    /// The cRLNumber extension's value, big-endian without leading zeros.
    number: Option<Vec<u8>>,
    /// Without extensions at all (version 1): rustls refuses it with a
    /// bare "ParseError" (one of version 2 without a number it takes).
    version_1: bool,
    this_update: x509_cert::time::Time,
    next_update: Option<x509_cert::time::Time>,
}

impl Crl {
    fn parse(der: &CertificateRevocationListDer<'_>) -> Option<Crl> {
        use x509_cert::der::{Decode as _, Encode as _};
        use x509_cert::ext::pkix::crl::CrlNumber;
        let list = x509_cert::crl::CertificateList::from_der(der).ok()?;
        let tbs = list.tbs_cert_list;
        let extension = |oid| {
            tbs.crl_extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == oid)
                .map(|e| e.extn_value.as_bytes())
        };
        let idp = extension(x509_cert::der::oid::db::rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT)
            .map(<[u8]>::to_vec);
        let aki = extension(x509_cert::der::oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER)
            .map(<[u8]>::to_vec);
        let number = match extension(x509_cert::der::oid::db::rfc5280::ID_CE_CRL_NUMBER) {
            Some(value) => Some(CrlNumber::from_der(value).ok()?.0.as_bytes().to_vec()),
            None => None,
        };
        Some(Crl {
            version_1: tbs.crl_extensions.is_none(),
            scope: (tbs.issuer.to_der().ok()?, idp, aki),
            issuer: tbs.issuer,
            number,
            this_update: tbs.this_update,
            next_update: tbs.next_update,
        })
    }

    /// Whether this CRL supersedes `other` (of the same scope): a higher
    /// CRL number (RFC 5280 §5.2.3: they only grow), else, without both
    /// numbers, a later `thisUpdate`.
    fn newer_than(&self, other: &Crl) -> bool {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => (a.len(), a) > (b.len(), b),
            _ => self.this_update.to_unix_duration() > other.this_update.to_unix_duration(),
        }
    }
}

/// Warns when `crl` is past its `nextUpdate`: the client certificates it
/// covers are refused from now on, so the operator hears of it when the
/// file is loaded, not only from clients. Returns whether it warned.
fn warn_if_expired(label: &str, crl: &Crl) -> bool {
    let Some(next) = crl.next_update else {
        return false;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let expired = now.is_ok_and(|now| next.to_unix_duration() <= now);
    if expired {
        tracing::warn!(
            file = label,
            issuer = %crl.issuer,
            next_update = %next,
            "client_crl: a CRL is past its nextUpdate; every client certificate it covers is refused until a fresh CRL is written over the file"
        );
    }
    expired
}

/// What a listener's client authentication loads with but likely does
/// not mean, for `check-config` (which has no log to warn in), each
/// prefixed by the key it is about: a `ca` certificate that is not a CA's
/// (client certificates are issued by a CA); a CRL past its `nextUpdate`
/// (every certificate it covers is refused); with CRLs, a CA of `ca`
/// without a CRL of its own among them (every certificate it issued is
/// refused). Files that do not parse are left to the load's errors.
pub fn client_auth_warnings(
    ca_pem: &[u8],
    ca_key: &str,
    crls: &[(String, Vec<u8>)],
    crl_key: &str,
) -> Vec<String> {
    use x509_cert::der::{Decode as _, Encode as _};
    let mut warnings = Vec::new();
    let anchors: Vec<x509_cert::Certificate> = CertificateDer::pem_slice_iter(ca_pem)
        .filter_map(Result::ok)
        .filter_map(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
        .collect();
    let issuers: Vec<Crl> = crls
        .iter()
        .flat_map(|(_, pem)| CertificateRevocationListDer::pem_slice_iter(pem))
        .filter_map(Result::ok)
        .filter_map(|der| Crl::parse(&der))
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    for (label, pem) in crls {
        for crl in CertificateRevocationListDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .filter_map(|der| Crl::parse(&der))
        {
            let expired = crl.next_update.filter(|next| {
                now.as_ref()
                    .is_ok_and(|now| next.to_unix_duration() <= *now)
            });
            if let Some(next) = expired {
                warnings.push(format!(
                    "{crl_key}: {label}: the CRL of {} is past its nextUpdate ({next}): every client certificate it covers is refused until a fresh CRL is written over the file",
                    crl.issuer
                ));
            }
            // Dated ahead of this machine by more than a day: one of the
            // two clocks is wrong (OpenSSL refuses such a CRL as not yet
            // valid; rustls takes it: time audit, stop 65).
            let ahead = now.as_ref().is_ok_and(|now| {
                crl.this_update.to_unix_duration() > *now + std::time::Duration::from_secs(86_400)
            });
            if ahead {
                warnings.push(format!(
                    "{crl_key}: {label}: the CRL of {} is dated {}, more than a day after this machine's clock: check the clock here, or the CA's (OpenSSL refuses such a CRL as not yet valid; it is used here)",
                    crl.issuer, crl.this_update
                ));
            }
        }
    }
    for (i, cert) in anchors.iter().enumerate() {
        let tbs = &cert.tbs_certificate;
        let is_ca = tbs
            .get::<x509_cert::ext::pkix::BasicConstraints>()
            .ok()
            .flatten()
            .is_some_and(|(_, bc)| bc.ca);
        if !is_ca {
            warnings.push(format!(
                "{ca_key}: certificate {i} ({}) is not a CA's (no basicConstraints CA:TRUE): client certificates are issued by a CA, so give the certificate of the CA that signs them",
                tbs.subject
            ));
        }
        let subject = tbs.subject.to_der().ok();
        if !crls.is_empty() && !issuers.iter().any(|c| Some(&c.scope.0) == subject.as_ref()) {
            warnings.push(format!(
                "{crl_key}: no CRL of {} (certificate {i} of {ca_key}) is in it: every client certificate that CA issued is refused (each certificate's issuer needs its CRL in the file)",
                tbs.subject
            ));
        }
    }
    warnings
}

/// Whether a failed handshake (as tokio-rustls reports it) was refused
/// because a CRL is past its `nextUpdate`: the operator's to fix, not the
/// client's.
pub fn refused_for_expired_crl(error: &std::io::Error) -> bool {
    use rustls::CertificateError::{ExpiredRevocationList, ExpiredRevocationListContext};
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            ExpiredRevocationList | ExpiredRevocationListContext { .. }
        ))
    )
}

/// Parses a PEM CA bundle into a root store; an empty bundle is an error.
fn ca_store(pem: &[u8], label: &str) -> Result<RootCertStore, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(label.to_owned(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCaCertificates(label.to_owned()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| TlsError::BadCa(label.to_owned(), e))?;
    }
    Ok(store)
}

/// Picks a certificate by SNI: the first whose SANs cover the requested name
/// (webpki rules, as a client would check), otherwise the first certificate.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    /// The first certificate naming each DNS name, and each `*.parent`
    /// (by `parent`), lowercase: a server name is looked up, not tried
    /// against every certificate, each parsed again (0.8 µs a certificate
    /// per handshake, which any client could make scan all 5,000 with an
    /// unknown name: scale audit, stop 65).
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    fn new(certs: &[CertSource]) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoServerCertificates);
        }
        let certs: Vec<Arc<CertifiedKey>> = certs
            .iter()
            .map(|s| Ok(Arc::new(certified_key(s, &format!("{} (key)", s.label))?)))
            .collect::<Result<_, TlsError>>()?;
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, key) in certs.iter().enumerate() {
            let Ok(der) = key.end_entity_cert() else {
                continue;
            };
            for name in dns_names(der) {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name).or_insert(i),
                };
            }
        }
        Ok(Self {
            certs,
            exact,
            wildcard,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni.and_then(|sni| ServerName::try_from(sni).ok());
        // The first certificate (in the configured order) naming it,
        // exactly or by a wildcard one label up, confirmed as rustls
        // would check it.
        let matching = name.and_then(|name| {
            let lower = sni?.trim_end_matches('.').to_ascii_lowercase();
            let by_name = self.exact.get(&lower).copied();
            let by_wildcard = lower
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent).copied());
            let i = by_name.into_iter().chain(by_wildcard).min()?;
            let key = &self.certs[i];
            key.end_entity_cert()
                .and_then(ParsedCertificate::try_from)
                .and_then(|cert| verify_server_name(&cert, &name))
                .is_ok()
                .then_some(key)
        });
        if let (None, Some(sni)) = (matching, sni) {
            tracing::debug!(sni, "no certificate matches SNI; using the default");
        }
        matching.or(self.certs.first()).map(Arc::clone)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The DNS names of a certificate's subjectAltName.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::{name::GeneralName, SubjectAltName};
    let Ok(cert) = x509_cert::Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() else {
        return Vec::new();
    };
    san.0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(name) => Some(name.as_str().to_string()),
            _ => None,
        })
        .collect()
}

/// Server config: TLS 1.2 + 1.3 only, ALPN ["h2","http/1.1"], no 0-RTT
/// (`max_early_data_size = 0`), default session resumption.
///
/// Certificates are chosen by SNI from each certificate's SANs (DNS names,
/// incl. wildcard `*.example.com` matching exactly one label; case-insensitive);
/// the FIRST certificate is the default used when the client sends no SNI
/// (dialling by IP) or an unknown name — never a failed handshake for missing
/// SNI.
///
/// Optional `client` → mTLS: clients must present a certificate chained
/// to its CA, and not revoked by its CRLs.
pub fn server_config(
    certs: &[CertSource],
    client: Option<&ClientAuth<'_>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(certs)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rustls)?;
    let verifies_clients = client.is_some();
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let roots = Arc::new(ca_store(client.ca_pem, client.ca_label)?);
            // With CRLs, each certificate of the chain (the anchor
            // excepted) must have its issuer's CRL: an unknown status is
            // refused, as OpenSSL's CRL_CHECK_ALL does.
            // A CRL past its nextUpdate no longer vouches for anything:
            // the certificates it covers are refused, as OpenSSL does.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .with_crls(crls(client.crls)?)
                .enforce_revocation_expiration()
                .build()
                .map_err(TlsError::ClientVerifier)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    if verifies_clients {
        // No resumption where client certificates are required: rustls
        // restores a resumed session's certificates without verifying them
        // again, so one that expired, or whose CRL passed its nextUpdate,
        // since the full handshake would still be taken (and each
        // resumption issues new tickets, so for as long as the client
        // keeps resuming).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Upstream client config, TLS 1.2 + 1.3. Roots: only `ca_pem` if given,
/// otherwise the system roots (unreadable system certificates are logged and
/// skipped). ALPN is left empty for hyper-rustls to set.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<ClientConfig, TlsError> {
    let roots = match ca_pem {
        Some(pem) => ca_store(pem, "CA bundle")?,
        None => system_roots(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "error loading system root certificates");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "ignored unparsable system root certificates");
    }
    if added == 0 {
        tracing::warn!("no system root certificates; upstream TLS verification will fail");
    }
    store
}

/// Demo/test helper: a self-signed certificate for `names` (those that parse
/// as IP addresses become IP SANs, the rest DNS SANs; the first is also the
/// subject CN). Returns `(cert_pem, key_pem)`.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(sans).map_err(TlsError::SelfSigned)?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    let key = rcgen::KeyPair::generate().map_err(TlsError::SelfSigned)?;
    let cert = params.self_signed(&key).map_err(TlsError::SelfSigned)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::WantsClientCert;
    use rustls::version::{TLS12, TLS13};
    use rustls::{ConfigBuilder, ProtocolVersion};
    use tokio::io::DuplexStream;
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    type Der = CertificateDer<'static>;
    type Outcome = (
        std::io::Result<client::TlsStream<DuplexStream>>,
        std::io::Result<server::TlsStream<DuplexStream>>,
    );

    fn source(names: &[&str]) -> (CertSource, Der) {
        let (cert, key) = self_signed(names).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let label = format!("{}.pem", names[0]);
        (
            CertSource {
                cert_pem: cert.into(),
                key_pem: key.into(),
                label,
            },
            der,
        )
    }

    fn two_certs() -> (Vec<CertSource>, Der, Der) {
        let (s1, d1) = source(&["ingest.example.com", "127.0.0.1"]);
        let (s2, d2) = source(&["*.eu.example.com"]);
        (vec![s1, s2], d1, d2)
    }

    /// A client trusting exactly `roots`, limited to `version`.
    fn client(
        roots: &[&Der],
        version: &'static SupportedProtocolVersion,
    ) -> ConfigBuilder<ClientConfig, WantsClientCert> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add((*root).clone()).unwrap();
        }
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(store)
    }

    async fn handshake(server: &Arc<ServerConfig>, client: ClientConfig, name: &str) -> Outcome {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let (c, s) = tokio::io::duplex(1 << 16);
        tokio::join!(
            TlsConnector::from(Arc::new(client)).connect(name, c),
            TlsAcceptor::from(Arc::clone(server)).accept(s)
        )
    }

    #[tokio::test]
    async fn sni_selects_certificate_and_falls_back_to_first() {
        let (sources, d1, d2) = two_certs();
        let server = server_config(&sources, None).unwrap();
        let cfg = client(&[&d1, &d2], &TLS13).with_no_client_auth();
        // "127.0.0.1": rustls sends no SNI for IP addresses; cert 1 has that IP SAN.
        for (name, want) in [
            ("ingest.example.com", &d1),
            ("INGEST.Example.COM", &d1),
            ("a.eu.example.com", &d2),
            ("B.EU.example.com", &d2),
            ("127.0.0.1", &d1),
        ] {
            let (c, s) = handshake(&server, cfg.clone(), name).await;
            let (c, _) = (c.unwrap(), s.unwrap());
            assert_eq!(
                &c.get_ref().1.peer_certificates().unwrap()[0],
                want,
                "{name}"
            );
        }
        // Names no certificate covers (wildcards match exactly one label) get
        // the default; a client would reject it, so check the resolver directly.
        let resolver = SniResolver::new(&sources).unwrap();
        for sni in [
            None,
            Some("other.example.org"),
            Some("a.b.eu.example.com"),
            Some("eu.example.com"),
        ] {
            assert_eq!(resolver.pick(sni).unwrap().cert[0], d1, "{sni:?}");
        }
    }

    /// Of several certificates naming a server name, the first configured
    /// is chosen, whether it names it exactly or by a wildcard; looked up,
    /// not tried one by one (thousands of certificates cost each
    /// handshake a scan: scale audit, stop 65).
    #[test]
    fn the_first_certificate_naming_a_server_name_is_chosen_from_many() {
        let (s0, d0) = source(&["default.example"]);
        let (s1, d1) = source(&["*.a.example"]);
        let (s2, d2) = source(&["x.a.example", "Other.Example"]);
        let mut sources = vec![s0, s1, s2];
        let mut many = Vec::new();
        for i in 0..200 {
            let (s, d) = source(&[&format!("t{i}.many.example")]);
            sources.push(s);
            many.push(d);
        }
        let resolver = SniResolver::new(&sources).unwrap();
        for (sni, want) in [
            (Some("x.a.example"), &d1),
            (Some("y.a.example"), &d1),
            (Some("other.example"), &d2),
            (Some("OTHER.example"), &d2),
            (Some("a.example"), &d0),
            (Some("z.x.a.example"), &d0),
            (Some("unknown.example"), &d0),
            (Some("t199.many.example"), &many[199]),
            (Some("t0.many.example"), &many[0]),
            (None, &d0),
        ] {
            assert_eq!(&resolver.pick(sni).unwrap().cert[0], want, "{sni:?}");
        }
    }

    #[tokio::test]
    async fn tls13_and_tls12_with_alpn() {
        let (sources, d1, _) = two_certs();
        let server = server_config(&sources, None).unwrap();
        assert_eq!(server.max_early_data_size, 0);
        for (version, want) in [
            (&TLS13, ProtocolVersion::TLSv1_3),
            (&TLS12, ProtocolVersion::TLSv1_2),
        ] {
            for (offer, selected) in [
                (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
                (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
                (&[][..], None),
            ] {
                let mut cfg = client(&[&d1], version).with_no_client_auth();
                cfg.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
                let (c, s) = handshake(&server, cfg, "ingest.example.com").await;
                let (c, s) = (c.unwrap(), s.unwrap());
                assert_eq!(c.get_ref().1.protocol_version(), Some(want));
                assert_eq!(s.get_ref().1.protocol_version(), Some(want));
                assert_eq!(c.get_ref().1.alpn_protocol(), selected);
                assert_eq!(s.get_ref().1.alpn_protocol(), selected);
            }
        }
    }

    #[tokio::test]
    async fn mtls_requires_client_cert_from_ca() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["uploader".to_owned()]).unwrap();
        let signed = (
            params.signed_by(&key, &ca).unwrap().pem(),
            key.serialize_pem(),
        );
        let stray = self_signed(&["uploader"]).unwrap();

        let (s1, d1) = source(&["ingest.example.com"]);
        let ca_pem = ca.pem();
        let auth = ClientAuth {
            ca_pem: ca_pem.as_bytes(),
            ca_label: "client_ca",
            crls: &[],
        };
        let server = server_config(&[s1], Some(&auth)).unwrap();
        let cases = [(None, false), (Some(&stray), false), (Some(&signed), true)];
        for version in [&TLS13, &TLS12] {
            for (auth, accept) in &cases {
                let cfg = match auth {
                    None => client(&[&d1], version).with_no_client_auth(),
                    Some((cert, key)) => {
                        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
                        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                        let builder = client(&[&d1], version);
                        builder.with_client_auth_cert(chain, key).unwrap()
                    }
                };
                let (_, s) = handshake(&server, cfg, "ingest.example.com").await;
                assert_eq!(s.is_ok(), *accept, "{version:?} {auth:?}: {s:?}");
            }
        }
        let empty = ClientAuth {
            ca_pem: b"",
            ca_label: "client_ca",
            crls: &[],
        };
        let err = server_config(&[source(&["x"]).0], Some(&empty)).unwrap_err();
        assert_eq!(err.to_string(), "client_ca: no CA certificates");
    }

    /// A client certificate its CA's CRL revokes is refused; one the CRL
    /// does not list is accepted, unless the CRL is past its nextUpdate
    /// (then every one is, and the error says why); a CRL file without a
    /// CRL is named.
    #[tokio::test]
    async fn a_revoked_client_certificate_is_refused() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |serial: u64| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["uploader".to_owned()]).unwrap();
            params.serial_number = Some(serial.into());
            let cert = params.signed_by(&key, &ca).unwrap();
            (
                cert.der().clone(),
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        };
        let crl = |this_update, next_update| {
            rcgen::CertificateRevocationListParams {
                this_update,
                next_update,
                crl_number: 1u64.into(),
                issuing_distribution_point: None,
                revoked_certs: vec![rcgen::RevokedCertParams {
                    serial_number: 2u64.into(),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }],
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&ca)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
        };
        let current = crl(
            rcgen::date_time_ymd(2026, 1, 1),
            rcgen::date_time_ymd(2036, 1, 1),
        );
        // Past its nextUpdate: it vouches for no one any more.
        let expired = crl(
            rcgen::date_time_ymd(2025, 1, 1),
            rcgen::date_time_ymd(2025, 2, 1),
        );
        let ca_pem = ca.pem();
        let (s1, d1) = source(&["ingest.example.com"]);
        for (crl, serial, accept) in [
            (&current, 1, true),
            (&current, 2, false),
            (&expired, 1, false),
            (&expired, 2, false),
        ] {
            let crls = [("client_crl".to_owned(), crl.clone())];
            let der = CertificateRevocationListDer::from_pem_slice(crl).unwrap();
            assert_eq!(
                warn_if_expired("client_crl", &Crl::parse(&der).unwrap()),
                std::ptr::eq(crl, &expired)
            );
            let auth = ClientAuth {
                ca_pem: ca_pem.as_bytes(),
                ca_label: "client_ca",
                crls: &crls,
            };
            let server = server_config(std::slice::from_ref(&s1), Some(&auth)).unwrap();
            let (cert, key) = leaf(serial);
            let cfg = client(&[&d1], &TLS13)
                .with_client_auth_cert(vec![cert], key)
                .unwrap();
            let (_, s) = handshake(&server, cfg, "ingest.example.com").await;
            let expired = std::ptr::eq(crl, &expired);
            assert_eq!(
                s.is_ok(),
                accept,
                "serial {serial}, expired {expired}: {s:?}"
            );
            if let Err(e) = s {
                assert_eq!(refused_for_expired_crl(&e), expired, "{e}");
            }
        }
        let junk = [("crl.pem".to_owned(), b"not a CRL".to_vec())];
        let auth = ClientAuth {
            ca_pem: ca_pem.as_bytes(),
            ca_label: "client_ca",
            crls: &junk,
        };
        let err = server_config(&[source(&["x"]).0], Some(&auth)).unwrap_err();
        assert!(
            err.to_string().starts_with("crl.pem: no CRL found"),
            "{err}"
        );
    }

    /// Of two CRLs of the same CA in the file, the newer is used whichever
    /// comes first: a new CRL appended to the old one (rustls checks the
    /// first of an issuer) used to leave its revocations unseen.
    #[tokio::test]
    async fn the_newest_of_a_ca_s_crls_is_used() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        // CRL 7 revokes nothing; CRL 8, a day later, revokes serial 2.
        let crl = |number: u64, day: u8, revoked: &[u64]| {
            rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2026, 1, day),
                next_update: rcgen::date_time_ymd(2036, 1, 1),
                crl_number: number.into(),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|serial| rcgen::RevokedCertParams {
                        serial_number: (*serial).into(),
                        revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&ca)
            .unwrap()
            .pem()
            .unwrap()
        };
        let (old, new) = (crl(7, 1, &[]), crl(8, 2, &[2]));
        let ca_pem = ca.pem();
        let (s1, d1) = source(&["ingest.example.com"]);
        for file in [format!("{old}{new}"), format!("{new}{old}")] {
            let crls = [("client_crl".to_owned(), file.into_bytes())];
            let auth = ClientAuth {
                ca_pem: ca_pem.as_bytes(),
                ca_label: "client_ca",
                crls: &crls,
            };
            assert_eq!(super::crls(&crls).unwrap().len(), 1);
            let server = server_config(std::slice::from_ref(&s1), Some(&auth)).unwrap();
            for (serial, accept) in [(1u64, true), (2, false)] {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params =
                    rcgen::CertificateParams::new(vec!["uploader".to_owned()]).unwrap();
                params.serial_number = Some(serial.into());
                let cert = params.signed_by(&key, &ca).unwrap().der().clone();
                let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                let cfg = client(&[&d1], &TLS13)
                    .with_client_auth_cert(vec![cert], key)
                    .unwrap();
                let (_, s) = handshake(&server, cfg, "ingest.example.com").await;
                assert_eq!(s.is_ok(), accept, "serial {serial}: {s:?}");
            }
        }
    }

    /// What loads and then refuses every client is said for check-config:
    /// a leaf given as the client CA, a CRL past its nextUpdate, CRLs
    /// without the CA's; and a CRL without a CRL number (which rustls
    /// cannot parse: "ParseError") is refused saying so (config audit,
    /// stop 63).
    #[test]
    fn client_authentication_that_refuses_every_client_is_said() {
        use x509_cert::der::{Decode as _, Encode as _};
        let authority = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap()
        };
        let crl_dated =
            |ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>, this: (i32, u8), next: (i32, u8)| {
                rcgen::CertificateRevocationListParams {
                    this_update: rcgen::date_time_ymd(this.0, this.1, 1),
                    next_update: rcgen::date_time_ymd(next.0, next.1, 1),
                    crl_number: 1u64.into(),
                    issuing_distribution_point: None,
                    revoked_certs: Vec::new(),
                    key_identifier_method: rcgen::KeyIdMethod::Sha256,
                }
                .signed_by(ca)
                .unwrap()
            };
        let crl = |ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>, next: (i32, u8)| {
            crl_dated(ca, (2026, 1), next)
        };
        let (ours, theirs) = (authority("our client CA"), authority("another CA"));
        let warnings = |ca_pem: &str, crls: &[String]| {
            let crls: Vec<(String, Vec<u8>)> = crls
                .iter()
                .map(|c| ("crl.pem".to_owned(), c.clone().into_bytes()))
                .collect();
            client_auth_warnings(ca_pem.as_bytes(), "client_ca", &crls, "client_crl")
        };
        let fresh = crl(&ours, (2036, 1)).pem().unwrap();
        assert_eq!(warnings(&ours.pem(), &[]), Vec::<String>::new());
        assert_eq!(
            warnings(&ours.pem(), std::slice::from_ref(&fresh)),
            Vec::<String>::new()
        );
        let stale = crl(&ours, (2026, 2)).pem().unwrap();
        let said = warnings(&ours.pem(), &[stale]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with(
                "client_crl: crl.pem: the CRL of CN=our client CA is past its nextUpdate"
            ),
            "{said:?}"
        );
        // Dated years ahead of the clock (its nextUpdate after that).
        let ahead = crl_dated(&ours, (2035, 1), (2036, 1)).pem().unwrap();
        let said = warnings(&ours.pem(), &[ahead]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with(
                "client_crl: crl.pem: the CRL of CN=our client CA is dated 2035-01-01"
            ),
            "{said:?}"
        );
        let foreign = crl(&theirs, (2036, 1)).pem().unwrap();
        let said = warnings(&ours.pem(), &[foreign]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("client_crl: no CRL of CN=our client CA (certificate 0 of client_ca) is in it: every client certificate that CA issued is refused"),
            "{said:?}"
        );
        let (leaf, _) = source(&["uploader.example"]);
        let said = warnings(std::str::from_utf8(&leaf.cert_pem).unwrap(), &[]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("is not a CA's"), "{said:?}");

        // The fresh CRL without its extensions (the CRL number among them):
        // a version 1 CRL, as `openssl ca -gencrl` makes without a
        // `crlnumber` file.
        let der = crl(&ours, (2036, 1)).der().to_vec();
        let pem_of = |der: &[u8]| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            format!(
                "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
                lines.join("\n")
            )
        };
        // Version 2 without its CRL number (its other extensions kept):
        // rustls takes it, so it loads (review, stop 63).
        let mut list = x509_cert::crl::CertificateList::from_der(&der).unwrap();
        if let Some(extensions) = list.tbs_cert_list.crl_extensions.as_mut() {
            extensions.retain(|e| e.extn_id != x509_cert::der::oid::db::rfc5280::ID_CE_CRL_NUMBER);
            assert!(!extensions.is_empty());
        }
        let unnumbered = [(
            "crl.pem".to_owned(),
            pem_of(&list.to_der().unwrap()).into_bytes(),
        )];
        assert_eq!(super::crls(&unnumbered).unwrap().len(), 1);
        let mut list = x509_cert::crl::CertificateList::from_der(&der).unwrap();
        list.tbs_cert_list.crl_extensions = None;
        let bare = pem_of(&list.to_der().unwrap());
        let crls = [("crl.pem".to_owned(), bare.into_bytes())];
        let Err(e) = super::crls(&crls) else {
            panic!("a CRL without a number was taken");
        };
        assert!(
            e.to_string()
                .starts_with("crl.pem: a CRL of CN=our client CA has no extensions"),
            "{e}"
        );
        // And as `openssl ca -gencrl` writes one: no version field either
        // (which x509-cert cannot read; it went to rustls, whose error
        // said "ParseError": audits, stop 64).
        let tbs = list.tbs_cert_list.to_der().unwrap();
        let (_, tbs_body) = der_split(&tbs);
        let (_, after_version) = der_split_first(tbs_body);
        let mut v1_tbs = vec![0x30];
        v1_tbs.extend(der_len(after_version.len()));
        v1_tbs.extend_from_slice(after_version);
        let mut body = v1_tbs;
        body.extend(list.signature_algorithm.to_der().unwrap());
        body.extend(list.signature.to_der().unwrap());
        let mut v1 = vec![0x30];
        v1.extend(der_len(body.len()));
        v1.extend(body);
        assert!(x509_cert::crl::CertificateList::from_der(&v1).is_err());
        let crls = [("v1.pem".to_owned(), pem_of(&v1).into_bytes())];
        let Err(e) = super::crls(&crls) else {
            panic!("a version 1 CRL was taken");
        };
        assert!(
            e.to_string()
                .starts_with("v1.pem: a CRL of CN=our client CA has no extensions"),
            "{e}"
        );
    }

    /// DER: a TLV's header and its contents.
    fn der_split(tlv: &[u8]) -> (&[u8], &[u8]) {
        let header = match tlv[1] {
            n if n < 0x80 => 2,
            n => 2 + usize::from(n & 0x7f),
        };
        (&tlv[..header], &tlv[header..])
    }

    /// DER: the first TLV of `body`, and what follows it.
    fn der_split_first(body: &[u8]) -> (&[u8], &[u8]) {
        let (header, contents) = der_split(body);
        let len = match header.len() {
            2 => usize::from(header[1]),
            _ => header[2..].iter().fold(0, |n, b| n << 8 | usize::from(*b)),
        };
        let end = header.len() + len;
        assert!(contents.len() >= len);
        (&body[..end], &body[end..])
    }

    /// DER: a length's encoding.
    fn der_len(n: usize) -> Vec<u8> {
        match n {
            0..0x80 => vec![n as u8],
            0x80..0x100 => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    }

    /// A self-signed certificate marked CA:TRUE (what `openssl req -x509`
    /// makes) is read as a CA's, and the refusal of it by a rustls client
    /// that trusts it comes with what to do (the error alone says
    /// `Other(OtherError(CaUsedAsEndEntity))`); one for another name and
    /// one from an unknown issuer are explained too.
    #[tokio::test]
    async fn a_refused_server_certificate_is_explained() {
        let mut params = rcgen::CertificateParams::new(vec!["ingest.example.com".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        assert!(validity(pem.as_bytes())[0].ca);
        let (plain, _) = self_signed(&["ingest.example.com"]).unwrap();
        assert!(!validity(plain.as_bytes())[0].ca);
        let server = server_config(
            &[CertSource {
                cert_pem: pem.clone().into(),
                key_pem: key.serialize_pem().into(),
                label: "ca.pem".into(),
            }],
            None,
        )
        .unwrap();
        let refused = async |server: &Arc<ServerConfig>, client: ClientConfig, name: &str| {
            let (c, _) = handshake(server, client, name).await;
            let e = c.expect_err("refused");
            let e = e
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .unwrap_or_else(|| panic!("not a rustls error: {e}"))
                .clone();
            refusal_hint(&e).unwrap_or_else(|| panic!("no hint for {e:?}"))
        };
        let trusting = client_config(Some(pem.as_bytes())).unwrap();
        assert!(refused(&server, trusting, "ingest.example.com")
            .await
            .contains("basicConstraints CA:TRUE"));
        let (leaf, der) = source(&["ingest.example.com"]);
        let plain = server_config(&[leaf], None).unwrap();
        let trusting = client(&[&der], &TLS13).with_no_client_auth();
        assert!(refused(&plain, trusting, "other.example.com")
            .await
            .contains("does not name the host"));
        let (_, other) = source(&["stranger.example.com"]);
        let stranger = client(&[&other], &TLS13).with_no_client_auth();
        assert!(refused(&plain, stranger, "ingest.example.com")
            .await
            .contains("not issued by a CA this client trusts"));
    }

    /// The server certificate's `notAfter`, as rcgen wrote it.
    #[test]
    fn a_certificate_s_end_of_validity_is_read() {
        let (cert, _) = self_signed(&["ingest.example.com"]).unwrap();
        let end = not_after(cert.as_bytes()).expect("a notAfter");
        let now = std::time::SystemTime::now();
        assert!(end > now, "a fresh certificate is valid");
        assert_eq!(not_after(b"not a certificate"), None);
    }

    #[test]
    fn errors_name_the_files() {
        let dir = std::env::temp_dir().join(format!("residency-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, _) = source(&["ingest.example.com"]);
        let (b, _) = source(&["other.example.com"]);
        let (cert, key) = (dir.join("ingest.pem"), dir.join("ingest.key"));
        std::fs::write(&cert, &a.cert_pem).unwrap();
        std::fs::write(&key, &b.key_pem).unwrap();
        let (cd, kd) = (cert.display(), key.display());
        let err = |c: &Path, k: &Path| load_cert_source(c, k).unwrap_err().to_string();

        assert_eq!(
            err(&cert, &key),
            format!("{kd}: private key does not match certificate {cd}")
        );
        assert_eq!(err(&key, &key), format!("{kd}: no certificate found"));
        // An RSA key ring does not sign with (1024 bits, from `openssl
        // genrsa 1024`): the error says which keys are taken.
        const RSA_1024: &str = "-----BEGIN RSA PRIVATE KEY-----\n\
             MIICXgIBAAKBgQCo9XuscwJK65fJyjVkKyTrFa+Dr8iJbdAvaLHOlAkIrC8Hc8ph\n\
             8EwNwTir/SZtDvQV0U+h1Kr67xYxQV04eTpQhJj8t6PD8v3pESVfx+zzmsmMbA94\n\
             yFdg++5ujEBFjFcCDSP1mhZ3Gc1noSnavfu5Oxc4edocMCrborMElg5RpQIDAQAB\n\
             AoGBAIikj/K1yKLiyg1OVcO/CMp+7UVpApvyja3p0/Mn0e6LojU6tfBjMH7nR3gA\n\
             8fS9ZTXH48kTf3wVpDMNk+C6Wie2973FXLTGklKPjwdV4ilkk4kunC2Yh9hE5rCh\n\
             PCerLuxpgUj0DUIgvbbWY/EyGB925kLAGeY5R5WoXVwXhTIBAkEA3zkIgAOLPt6e\n\
             DbCt+Y1fQNsfyy4lSC+vEweuypU4x/xtmxtCKu/zqfq8y+c+CjL0iAFgA8bKoGBZ\n\
             CqVXQmpDQQJBAMHEqmtLgx5AYfxPNZpbS0AbC4trMWDFupmlX1IrIySOFskyn4cx\n\
             dRUAD88EHSRCUorQZsLZoJ+JrWDe2k8kiWUCQQCo64XtKcFj0B8XCQ5+fGcKs0d5\n\
             /++iksMPyY6SKx4O6I0hBR2rVG21wdLBErq2CR1XFoNMGFEZ0A9RqRFBZxyBAkEA\n\
             jA7mi/WiCdzJtsFeYns40lZ6KsVJhMSHk4WId/E8TrDx4W5ZBzSFh69qvd0gX1Qd\n\
             K79ld9QsmQTAMLQEoo4rTQJAXbGcLNPyEJFyk3M94sTEoChHgYEjOgfrx1DP2jlF\n\
             yj4KJfdRJRaXxH9gCPtMY3YN098nIrQdzuMPWnyzr9cNzQ==\n\
             -----END RSA PRIVATE KEY-----\n";
        let small = dir.join("small.key");
        std::fs::write(&small, RSA_1024).unwrap();
        let e = err(&cert, &small);
        assert!(
            e.starts_with(&format!("{}: unusable private key: ", small.display()))
                && e.ends_with(
                    "(keys taken: RSA of 2048 to 8192 bits, ECDSA P-256 or P-384, Ed25519)"
                ),
            "{e}"
        );
        assert_eq!(err(&cert, &cert), format!("{cd}: no private key found"));
        // An encrypted key (`openssl pkey -aes256`, or a traditional one
        // with `Proc-Type`) is said to be one.
        for encrypted in [
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        ] {
            std::fs::write(&key, encrypted).unwrap();
            assert!(
                err(&cert, &key).starts_with(&format!(
                    "{}: the private key is encrypted, which is not supported",
                    key.display()
                )),
                "{}",
                err(&cert, &key)
            );
        }
        let missing = dir.join("missing.pem");
        assert!(err(&missing, &key).starts_with(&format!("{}: cannot read: ", missing.display())));
        std::fs::write(&key, &a.key_pem).unwrap();
        assert_eq!(load_cert_source(&cert, &key).unwrap().label, cd.to_string());
        std::fs::remove_dir_all(&dir).unwrap();

        let mixed = CertSource {
            key_pem: b.key_pem,
            ..a
        };
        assert_eq!(
            server_config(&[mixed], None).unwrap_err().to_string(),
            "ingest.example.com.pem (key): private key does not match certificate ingest.example.com.pem"
        );
        assert!(matches!(
            server_config(&[], None),
            Err(TlsError::NoServerCertificates)
        ));
    }

    #[tokio::test]
    async fn client_config_trusts_only_the_given_ca() {
        let (s1, _) = source(&["ingest.example.com"]);
        let (s2, _) = source(&["ingest.example.com"]);
        let server = server_config(std::slice::from_ref(&s1), None).unwrap();
        let right = client_config(Some(&s1.cert_pem)).unwrap();
        assert!(right.alpn_protocols.is_empty());
        let (c, s) = handshake(&server, right, "ingest.example.com").await;
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        let wrong = client_config(Some(&s2.cert_pem)).unwrap();
        let (c, _) = handshake(&server, wrong, "ingest.example.com").await;
        assert!(c.is_err(), "trusted a certificate outside the CA bundle");

        let err = client_config(Some(b"not pem")).unwrap_err().to_string();
        assert_eq!(err, "CA bundle: no CA certificates");
        client_config(None).unwrap();
    }
}
