//! Tenant pins over real TLS: a CH-pinned tenant uploading from a German
//! address lands in zurich whether it is recognised by the server name it
//! dials, by its client certificate or by a signed token; a token that is
//! present and invalid gets 401 and nothing is forwarded; `mismatch =
//! "refuse"` gives 451; a tenant file reloaded under load changes routing
//! without a failed request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use residency_log::receipt::Receipt;
use residency_log::record::Record;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use crate::support::*;

const ISSUER: &str = "https://id.tenants.test";
const AUDIENCE: &str = "ingest.tenants.test";

/// A token issuer: an Ed25519 and a P-256 key, published as a JWKS.
struct Issuer {
    ed: Vec<u8>,
    ec: Vec<u8>,
    jwks: String,
}

impl Issuer {
    fn new() -> Issuer {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ed_pub = Ed25519KeyPair::from_pkcs8(&ed)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let ec_pub = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec, &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&ed_pub), "kid": "ed1", "alg": "EdDSA", "use": "sig"},
            {"kty": "EC", "crv": "P-256", "x": b64(&ec_pub[1..33]), "y": b64(&ec_pub[33..65]), "kid": "ec1", "alg": "ES256", "use": "sig"},
        ]})
        .to_string();
        Issuer { ed, ec, jwks }
    }

    /// A `[tenancy.token]` section trusting this issuer: its JWKS written
    /// into `keys`, with the test's issuer and audience.
    fn token_section(&self, keys: &TempDir) -> String {
        let jwks = keys.path().join("jwks.json");
        std::fs::write(&jwks, &self.jwks).unwrap();
        format!(
            "[tenancy.token]\njwks = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n",
            jwks.display()
        )
    }

    /// A token signed with the Ed25519 key (kid `ed1`).
    fn ed(&self, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::EdDSA,
            "ed1",
            &EncodingKey::from_ed_der(&self.ed),
            claims,
        )
    }

    /// A token signed with the P-256 key (kid `ec1`).
    fn ec(&self, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::ES256,
            "ec1",
            &EncodingKey::from_ec_der(&self.ec),
            claims,
        )
    }
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "tenant": tenant})
}

/// The record a 2xx's receipt carries.
fn record_of(reply: &Reply) -> Record<'static> {
    let receipt = Receipt::parse(reply.header("residency-receipt").expect("a receipt")).unwrap();
    Record::from_bytes(&receipt.record).unwrap()
}

fn tenant_of(reply: &Reply) -> serde_json::Value {
    serde_json::to_value(record_of(reply).tenant).unwrap()
}

async fn upload(client: &Client, origin: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("x-forwarded-for", origin)];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    client
        .send("POST", "/v1/telemetry", &headers, "cpu=0.5")
        .await
}

#[tokio::test]
async fn a_ch_pinned_tenant_lands_in_zurich_from_germany_by_server_name_and_token() {
    let issuer = Issuer::new();
    let keys = TempDir::new("jwks");
    let proxy = Proxy::start(Setup {
        second_cert: Some(vec!["acme.ingest.test", "globex.ingest.test"]),
        transparency: Some(String::new()),
        extra: format!(
            r#"
[[tenants]]
name = "acme"
jurisdiction = "ch"
sni = ["acme.ingest.test"]
[[tenants]]
name = "globex"
jurisdiction = "ch"
sni = ["globex.ingest.test"]
mismatch = "refuse"
[[tenants]]
name = "initech"
jurisdiction = "eu"
{}"#,
            issuer.token_section(&keys)
        ),
        ..Setup::default()
    })
    .await;
    let by_ip = proxy.client();
    let acme = proxy.client().sni(Some("acme.ingest.test"));
    let globex = proxy.client().sni(Some("globex.ingest.test"));

    // GeoIP alone: Germany is eu.
    let reply = upload(&by_ip, DE, None).await;
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    assert_eq!(tenant_of(&reply), serde_json::Value::Null);

    // The server name recognises acme: its ch pin wins over GeoIP.
    let reply = upload(&acme, DE, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    assert_eq!(reply.header("residency-jurisdiction"), Some("ch"));
    assert_eq!(
        tenant_of(&reply),
        json!({"name": "acme", "source": "sni", "origin_jurisdiction": "eu"})
    );
    let record = record_of(&reply);
    assert_eq!(record.country.as_deref(), Some("DE"));
    assert_eq!(record.jurisdiction.as_deref(), Some("ch"));
    // The data centre learns the tenant from the proxy, and no client's
    // claim of an identity: RFC 9440's fields, a front's, a tenant header.
    let identity_claims = [
        ("client-cert", ":MIIB:"),
        (
            "x-forwarded-client-cert",
            "URI=spiffe://acme.test/devices/7",
        ),
        ("x-ssl-client-s-dn", "CN=acme-uploader"),
        ("x-tenant", "globex"),
        ("residency-tenant", "globex"),
    ];
    for (from, tenant) in [(&acme, Some("acme")), (&by_ip, None)] {
        let mut headers = vec![("x-forwarded-for", DE)];
        headers.extend(identity_claims);
        let reply = from
            .send("POST", "/v1/telemetry", &headers, "cpu=0.5")
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        let dc = reply.header("residency-datacenter").unwrap().to_string();
        let got = proxy.upstream(&dc).last();
        for (name, _) in identity_claims {
            if name != "residency-tenant" {
                assert!(got.headers.get(name).is_none(), "{name} reached {dc}");
            }
        }
        assert_eq!(
            got.headers
                .get("residency-tenant")
                .map(|v| v.to_str().unwrap()),
            tenant
        );
    }

    // mismatch = "refuse": 451 from Germany, stored from Switzerland.
    let (zurich, frankfurt) = (
        proxy.upstream("zurich").count(),
        proxy.upstream("frankfurt").count(),
    );
    let reply = upload(&globex, DE, None).await;
    assert_eq!(reply.status, 451, "{reply:?}");
    assert_eq!(reply.json()["error"], "tenant_origin_mismatch");
    assert_eq!(
        proxy.upstream("zurich").count(),
        zurich,
        "nothing forwarded"
    );
    assert_eq!(
        proxy.upstream("frankfurt").count(),
        frankfurt,
        "nothing forwarded"
    );
    let reply = upload(&globex, CH, None).await;
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));

    // A connection made for acme reused for globex (both names on one
    // certificate, as browsers coalesce): 421, so the client retries on a
    // connection of its own, over either protocol; so is one reused for a
    // name no tenant has (acme's pin is not that name's: spoofing review,
    // stop 63 — it was acme's); acme's own host, or an address (which
    // names nothing), is acme's.
    // An upload on acme's connection, for `authority`, from `origin`.
    let on_acme = async |v: Http, authority: &str, origin: &str| {
        acme.clone()
            .version(v)
            .send(
                "POST",
                &format!("https://{authority}/v1/telemetry"),
                &[("x-forwarded-for", origin)],
                "cpu=0.5",
            )
            .await
    };
    for v in [Http::One, Http::Two] {
        let before = proxy.counts();
        let reply = on_acme(v, "GLOBEX.ingest.test:8443", CH).await;
        assert_eq!(reply.status, 421, "{v:?}: {reply:?}");
        assert_eq!(reply.json()["error"], "misdirected_request", "{v:?}");
        assert_eq!(proxy.counts(), before, "{v:?}: nothing forwarded");
        // A fully qualified name (trailing dot) is the name; so, to a data
        // centre that trims dots from `X-Forwarded-Host`, is one with two.
        for host in ["globex.ingest.test.", "globex.ingest.test..:8443"] {
            let reply = on_acme(v, host, CH).await;
            assert_eq!(reply.status, 421, "{v:?} {host}: {reply:?}");
        }
        for host in ["acme.ingest.test", "127.0.0.1"] {
            let reply = on_acme(v, host, DE).await;
            assert_eq!(reply.status, 201, "{v:?} {host}: {reply:?}");
            assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
        }
        let before = proxy.counts();
        let reply = on_acme(v, "localhost", DE).await;
        assert_eq!(reply.status, 421, "{v:?}: {reply:?}");
        assert_eq!(proxy.counts(), before, "{v:?}: nothing forwarded");
        // And a connection made for a name no tenant has, or for none (by
        // address), reused for acme's name: 421 too, not GeoIP's frankfurt.
        for client in [by_ip.clone(), proxy.client().sni(Some("localhost"))] {
            let before = proxy.counts();
            let reply = client
                .version(v)
                .send(
                    "POST",
                    "https://acme.ingest.test/v1/telemetry",
                    &[("x-forwarded-for", DE)],
                    "cpu=0.5",
                )
                .await;
            assert_eq!(reply.status, 421, "{v:?}: {reply:?}");
            assert_eq!(proxy.counts(), before, "{v:?}: nothing forwarded");
        }
    }

    // A token naming acme, EdDSA and ES256.
    for token in [issuer.ed(&claims("acme")), issuer.ec(&claims("acme"))] {
        let reply = upload(&by_ip, DE, Some(&token)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
        assert_eq!(
            tenant_of(&reply),
            json!({"name": "acme", "source": "token", "origin_jurisdiction": "eu"})
        );
    }
    // A token naming initech (eu) from Switzerland: frankfurt, ch recorded.
    let reply = upload(&by_ip, CH, Some(&issuer.ed(&claims("initech")))).await;
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    assert_eq!(tenant_of(&reply)["origin_jurisdiction"], "ch");

    // Present and invalid: 401, never a fall-back to GeoIP, nothing forwarded.
    let other = Issuer::new();
    let forged = other.ed(&claims("acme")); // kid ed1, another key
    let expired =
        issuer.ed(&json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() - 3600, "tenant": "acme"}));
    let audience = issuer
        .ed(&json!({"iss": ISSUER, "aud": "elsewhere", "exp": now() + 300, "tenant": "acme"}));
    let wrong_issuer = issuer.ed(
        &json!({"iss": "https://evil.test", "aud": AUDIENCE, "exp": now() + 300, "tenant": "acme"}),
    );
    let no_exp = issuer.ed(&json!({"iss": ISSUER, "aud": AUDIENCE, "tenant": "acme"}));
    let unknown = issuer.ed(&claims("nobody"));
    let hmac = sign(
        Algorithm::HS256,
        "ed1",
        &EncodingKey::from_secret(b"secret"),
        &claims("acme"),
    );
    // Signed as they are, with header members jsonwebtoken cannot make.
    let raw_ed = |header: &str, claims: &str| {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = Ed25519KeyPair::from_pkcs8(&issuer.ed).unwrap();
        let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).as_ref());
        format!("{input}.{signature}")
    };
    let ed1 = json!({"alg": "EdDSA", "kid": "ed1"}).to_string();
    let plain = raw_ed(&ed1, &claims("acme").to_string());
    assert_eq!(
        upload(&by_ip, DE, Some(&plain)).await.status,
        201,
        "the raw signer works"
    );
    let crit = raw_ed(
        &json!({"alg": "EdDSA", "kid": "ed1", "crit": ["exp2"], "exp2": 1}).to_string(),
        &claims("acme").to_string(),
    );
    // The tenant named twice: refused, not read as the last one.
    let twice = claims("initech").to_string();
    let twice = raw_ed(
        &ed1,
        &format!("{},\"tenant\":\"acme\"}}", &twice[..twice.len() - 1]),
    );
    let with = |extra: serde_json::Value| {
        let mut c = claims("acme");
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        issuer.ed(&c)
    };
    let nbf_text = with(json!({"nbf": "4102444800"}));
    let nbf_huge = with(json!({"nbf": 1e20}));
    let nbf_negative = with(json!({"nbf": -1}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat_ahead = with(json!({"iat": now + 3600}));
    let iat_text = with(json!({"iat": now.to_string()}));
    for (what, iat) in [("now", now), ("30 s ahead, within the leeway", now + 30)] {
        let token = with(json!({ "iat": iat }));
        let reply = upload(&by_ip, DE, Some(&token)).await;
        assert_eq!(reply.status, 201, "iat {what}: {reply:?}");
    }
    let iss_list = with(json!({"iss": [ISSUER, "https://other.test"]}));
    let mut tampered = issuer.ed(&claims("initech"));
    let payload = URL_SAFE_NO_PAD.encode(claims("acme").to_string());
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    let before = proxy.counts();
    for (what, token) in [
        ("forged", forged.as_str()),
        ("expired", &expired),
        ("wrong audience", &audience),
        ("wrong issuer", &wrong_issuer),
        ("no exp", &no_exp),
        ("unknown tenant", &unknown),
        ("HS256", &hmac),
        ("payload swapped", &tampered),
        ("garbage", "not.a.jwt"),
        ("crit", &crit),
        ("nbf as text", &nbf_text),
        ("nbf beyond u64", &nbf_huge),
        ("nbf negative", &nbf_negative),
        ("iat an hour ahead", &iat_ahead),
        ("iat as text", &iat_text),
        ("iss as a list", &iss_list),
        ("tenant claim twice", &twice),
    ] {
        let reply = upload(&by_ip, DE, Some(token)).await;
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert_eq!(reply.json()["error"], "invalid_tenant_token", "{what}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
    }
    // Present but unreadable: the same 401, not GeoIP.
    let valid = format!("Bearer {}", issuer.ed(&claims("acme")));
    let expired_bearer = format!("Bearer {expired}");
    // A valid token without its scheme, or `Bearer` run into it (JOSE
    // audit, stop 69: GeoIP decided, past the pin).
    let bare = issuer.ed(&claims("acme"));
    let (run_into, comma) = (format!("Bearer{bare}"), format!("bearer,{bare}"));
    let trailing = format!("{bare};");
    for (what, headers) in [
        ("Bearer alone", vec![("authorization", "Bearer")]),
        ("no scheme", vec![("authorization", bare.as_str())]),
        (
            "Bearer run into it",
            vec![("authorization", run_into.as_str())],
        ),
        (
            "Bearer and a comma",
            vec![("authorization", comma.as_str())],
        ),
        (
            "no scheme, a trailing ;",
            vec![("authorization", trailing.as_str())],
        ),
        ("non-ASCII", vec![("authorization", "Bearer eyJ\u{e9}")]),
        (
            "two Authorization fields",
            vec![
                ("authorization", "Basic dXM6cHc="),
                ("authorization", expired_bearer.as_str()),
            ],
        ),
        (
            "a valid token beside another field",
            vec![
                ("authorization", valid.as_str()),
                ("authorization", "Bearer x"),
            ],
        ),
    ] {
        let mut all = vec![("x-forwarded-for", DE)];
        all.extend(headers);
        let reply = by_ip.send("POST", "/v1/telemetry", &all, "cpu=0.5").await;
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert_eq!(reply.json()["error"], "invalid_tenant_token", "{what}");
    }
    assert_eq!(
        proxy.counts(),
        before,
        "no invalid token forwarded anything"
    );
    // A tab after the scheme still names the token (the pin holds).
    let tabbed = format!("Bearer\t{}", issuer.ed(&claims("acme")));
    let reply = by_ip
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", DE), ("authorization", tabbed.as_str())],
            "cpu=0.5",
        )
        .await;
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));

    // The server name says acme, the token initech: ambiguous, 403.
    let reply = upload(&acme, DE, Some(&issuer.ed(&claims("initech")))).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"], "tenant_conflict");

    // Metrics: how tenants were recognised (a closed label set; refused
    // recognitions are in residency_rejections_total).
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let m = |s: &str| metric(&metrics, s).unwrap_or(0.0);
    assert_eq!(
        m("residency_tenant_requests_total{tenant_source=\"sni\"}"),
        8.0,
        "{metrics}"
    );
    assert_eq!(
        m("residency_tenant_requests_total{tenant_source=\"token\"}"),
        7.0
    );
    assert_eq!(
        m("residency_tenant_requests_total{tenant_source=\"none\"}"),
        2.0
    );
    assert_eq!(
        m("residency_tenant_origin_mismatches_total{action=\"allowed\"}"),
        13.0
    );
    assert_eq!(
        m("residency_rejections_total{reason=\"misdirected_request\"}"),
        12.0
    );
    assert_eq!(
        m("residency_tenant_origin_mismatches_total{action=\"refused\"}"),
        1.0
    );
    assert_eq!(
        m("residency_rejections_total{reason=\"invalid_tenant_token\"}"),
        25.0
    );
    assert!(
        !metrics.contains("tenant=\"acme\""),
        "tenant names stay out of metrics by default"
    );

    // /decide shows the decision order: the pin, then GeoIP; a server
    // name as a client may send it (upper case, fully qualified) is taken
    // as the TLS layer takes it.
    for sni in ["ACME.ingest.test.", "acme.ingest.test"] {
        let (status, body) = proxy.admin_get(&format!("/decide?ip={DE}&sni={sni}")).await;
        assert_eq!(status, 200, "{body}");
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(d["tenant"]["name"], "acme", "{sni}: {body}");
    }
    let (status, body) = proxy
        .admin_get(&format!("/decide?ip={DE}&sni=acme.ingest.test"))
        .await;
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["decided_by"], "tenant");
    assert_eq!(d["tenant"]["name"], "acme");
    assert_eq!(d["tenant"]["recognized_by"], "sni");
    assert_eq!(d["jurisdiction"], "ch");
    assert_eq!(d["assigned_by"], "tenant");
    assert_eq!(d["origin_jurisdiction"], "eu");
    assert_eq!(d["datacenter"], "zurich");
    let (_, body) = proxy
        .admin_get(&format!("/decide?ip={DE}&tenant=globex"))
        .await;
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["status"], 451, "{body}");
    assert_eq!(d["reason"], "tenant_origin_mismatch");
    let (_, body) = proxy.admin_get(&format!("/decide?ip={DE}")).await;
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["decided_by"], "geoip");
    assert_eq!(d["datacenter"], "frankfurt");
    // An address that is none, or a parameter given twice, is said (the
    // first was taken, a bad address read as none given).
    for (path, said) in [
        (
            "/decide?ip=192.0.2.300".to_string(),
            "ip: `192.0.2.300` is not an IPv4 or IPv6 address",
        ),
        (
            format!("/decide?ip={DE}&tenant=acme&tenant=globex"),
            "tenant: given more than once",
        ),
    ] {
        let (status, body) = proxy.admin_get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(d["error"], said, "{path}");
    }
    let (status, body) = proxy
        .admin_get("/decide?ip=%3A%3Affff%3A198.51.100.20")
        .await;
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        d["datacenter"], "frankfurt",
        "an escaped mapped address: {body}"
    );
    proxy.stop().await;
}

/// `[tenancy.token] typ`: a token must carry that type (RFC 8725 §3.11),
/// read as the media type it names (RFC 7515 §4.1.9: `application/`
/// implied, case ignored); any other type, or none, is 401 and nothing
/// is forwarded.
#[tokio::test]
async fn a_required_token_type_is_checked() {
    let issuer = Issuer::new();
    let keys = TempDir::new("jwks-typ");
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{}typ = \"at+jwt\"\n",
            issuer.token_section(&keys)
        ),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed1".into());
        header.typ = typ.map(str::to_string);
        jsonwebtoken::encode(
            &header,
            &claims("acme"),
            &EncodingKey::from_ed_der(&issuer.ed),
        )
        .unwrap()
    };
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let reply = upload(&client, DE, Some(&typed(Some(typ)))).await;
        assert_eq!(reply.status, 201, "{typ}: {reply:?}");
        assert_eq!(
            reply.header("residency-datacenter"),
            Some("zurich"),
            "{typ}"
        );
    }
    let before = proxy.counts();
    for typ in [Some("JWT"), Some("application/jwt"), Some("at+jwt2"), None] {
        let reply = upload(&client, DE, Some(&typed(typ))).await;
        assert_eq!(reply.status, 401, "{typ:?}: {reply:?}");
        assert_eq!(reply.json()["error"], "invalid_tenant_token", "{typ:?}");
    }
    assert_eq!(proxy.counts(), before, "nothing forwarded");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_certificate_recognises_the_tenant() {
    let (ca, leaves) = client_ca_and_certs(&[
        Some("spiffe://acme.test/devices/7"),
        Some("spiffe://globex.test/devices/1"),
    ]);
    let files = TempDir::new("tenant-mtls");
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let proxy = Proxy::start(Setup {
        transparency: Some(String::new()),
        extra: format!(
            "{}\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n\
             client_cert = [\"uri:spiffe://acme.test/devices/*\"]\n",
            mtls_listener(0, &ca_path)
        ),
        ..Setup::default()
    })
    .await;
    let mtls = proxy.addrs[1];
    let (cert, key) = &leaves[0];
    let client = Client::new(mtls, &proxy.certs).client_cert(cert, key);
    let reply = upload(&client, DE, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    assert_eq!(
        tenant_of(&reply),
        json!({"name": "acme", "source": "client_cert", "origin_jurisdiction": "eu"})
    );
    // A certificate of another identity from the same CA: GeoIP decides.
    let (cert, key) = &leaves[1];
    let other = Client::new(mtls, &proxy.certs).client_cert(cert, key);
    let reply = upload(&other, DE, None).await;
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    assert_eq!(tenant_of(&reply), serde_json::Value::Null);
    proxy.stop().await;
}

/// A certificate's DNS name written fully qualified (`name.`, as some CAs
/// issue them) and in another case is the name, as a server name is: exact
/// and `*.suffix` patterns recognise it (it named no one before).
#[tokio::test]
async fn a_certificate_dns_name_with_a_trailing_dot_recognises_the_tenant() {
    let pki = ClientPki::with_dns_names(&[
        "Device-7.Clients.Test.",
        "unit-1.globex.test.",
        "unit-1.other.test.",
    ]);
    let files = TempDir::new("tenant-dns-dot");
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca).unwrap();
    let proxy = Proxy::start(Setup {
        transparency: Some(String::new()),
        extra: format!(
            "{}\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n\
             client_cert = [\"dns:device-7.clients.test\"]\n\
             [[tenants]]\nname = \"globex\"\njurisdiction = \"us\"\n\
             client_cert = [\"dns:*.globex.test\"]\n",
            mtls_listener(0, &ca_path)
        ),
        ..Setup::default()
    })
    .await;
    let mtls = proxy.addrs[1];
    let expected = [
        (
            "zurich",
            json!({"name": "acme", "source": "client_cert", "origin_jurisdiction": "eu"}),
        ),
        (
            "virginia",
            json!({"name": "globex", "source": "client_cert", "origin_jurisdiction": "eu"}),
        ),
        // No tenant's name: GeoIP decides.
        ("frankfurt", serde_json::Value::Null),
    ];
    for ((cert, key), (datacenter, tenant)) in pki.leaves.iter().zip(expected) {
        let client = Client::new(mtls, &proxy.certs).client_cert(cert, key);
        let reply = upload(&client, DE, None).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(
            reply.header("residency-datacenter"),
            Some(datacenter),
            "{tenant}"
        );
        assert_eq!(tenant_of(&reply), tenant);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_tenant_file_reload_under_load_changes_routing_without_a_failed_request() {
    let files = TempDir::new("tenant-file");
    let tenants = files.path().join("tenants.toml");
    let pinned = |j: &str| {
        format!(
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"{j}\"\nsni = [\"acme.ingest.test\"]\n"
        )
    };
    std::fs::write(&tenants, pinned("eu")).unwrap();
    let proxy = Proxy::start(Setup {
        second_cert: Some(vec!["acme.ingest.test"]),
        extra: format!(
            "[timeouts]\nreload_poll = \"100ms\"\n[tenancy]\nfile = \"{}\"\n",
            tenants.display()
        ),
        ..Setup::default()
    })
    .await;
    let acme = proxy.client().sni(Some("acme.ingest.test"));
    assert_eq!(
        upload(&acme, CH, None).await.header("residency-datacenter"),
        Some("frankfurt"),
        "pinned to eu from Switzerland"
    );

    // Continuous load (bounded: at most 3,000 uploads or 30 s).
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (acme, stop, seen) = (acme.clone(), stop.clone(), seen.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            for i in 0..3000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                use http_body_util::BodyExt as _;
                let body = http_body_util::Full::new(bytes::Bytes::from(format!("load {i}")))
                    .map_err(|e| match e {})
                    .boxed();
                let reply = acme
                    .send_body("POST", "/v1/telemetry", &[("x-forwarded-for", CH)], body)
                    .await;
                let answer = reply.map(|r| {
                    (
                        r.status.as_u16(),
                        r.header("residency-datacenter").unwrap_or("").to_string(),
                    )
                });
                seen.lock()
                    .unwrap()
                    .push(answer.unwrap_or((0, String::new())));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Re-pinned to ch: written aside and renamed, as config management does.
    let aside = files.path().join("tenants.toml.new");
    std::fs::write(&aside, pinned("ch")).unwrap();
    std::fs::rename(&aside, &tenants).unwrap();
    eventually("acme is now pinned to ch", async || {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|(_, dc)| dc == "zurich")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 20, "{} uploads under load", seen.len());
    assert!(
        seen.iter().all(|(status, _)| *status == 201),
        "failed requests during the reload: {seen:?}"
    );
    let first_ch = seen.iter().position(|(_, dc)| dc == "zurich").unwrap();
    assert!(first_ch > 0, "frankfurt before the reload");
    assert!(
        seen[first_ch..].iter().all(|(_, dc)| dc == "zurich"),
        "once reloaded, never back: {seen:?}"
    );
    proxy.stop().await;
}

/// A tenant recognised by its certificate's subject CN, recorded as a
/// keyed hash of its name (`[tenancy] record = "hmac"`); recognised by its
/// server name alone, which anyone can send, by another hash (tenant
/// audit, stop 66: anyone could learn the one hash from an upload of their
/// own with that name, and pick out the tenant's certificate-recognised
/// records in the public log).
#[tokio::test]
async fn a_subject_cn_recognises_the_tenant_and_the_record_names_it_by_keyed_hash() {
    let (ca, leaves) = client_ca_and_certs(&[None]);
    let files = TempDir::new("tenant-cn");
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let hmac_key = files.path().join("tenant-hmac.key");
    std::fs::write(&hmac_key, [7u8; 32]).unwrap();
    let proxy = Proxy::start(Setup {
        second_cert: Some(vec!["acme.ingest.test"]),
        transparency: Some(String::new()),
        extra: format!(
            "{}\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\nclient_cert = [\"cn:device-7\"]\nsni = [\"acme.ingest.test\"]\n\
             [tenancy]\nrecord = \"hmac\"\nrecord_hmac_key = \"{}\"\n",
            mtls_listener(0, &ca_path),
            hmac_key.display()
        ),
        ..Setup::default()
    })
    .await;
    let mtls = proxy.addrs[1];
    let (cert, key) = &leaves[0];
    let client = Client::new(mtls, &proxy.certs).client_cert(cert, key);
    let reply = upload(&client, DE, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    let tenant = tenant_of(&reply);
    assert_eq!(tenant["source"], "client_cert", "{tenant}");
    let name = tenant["name"].as_str().unwrap();
    assert!(
        name.starts_with("hmac-sha256:") && name.len() == "hmac-sha256:".len() + 32,
        "{name}"
    );
    assert!(!name.contains("acme"), "the name itself is not recorded");
    // The same key gives the same name: an auditor holding it can tell.
    let again = upload(&client, CH, None).await;
    assert_eq!(tenant_of(&again)["name"], name);
    let by_name = upload(&proxy.client().sni(Some("acme.ingest.test")), DE, None).await;
    assert_eq!(by_name.header("residency-datacenter"), Some("zurich"));
    let tenant = tenant_of(&by_name);
    assert_eq!(tenant["source"], "sni", "{tenant}");
    let sni_name = tenant["name"].as_str().unwrap();
    assert!(sni_name.starts_with("hmac-sha256:"), "{sni_name}");
    assert_ne!(sni_name, name, "the server name's hash is its own");
    let sni_again = upload(&proxy.client().sni(Some("acme.ingest.test")), CH, None).await;
    assert_eq!(tenant_of(&sni_again)["name"], sni_name);
    proxy.stop().await;
}

/// Two keys of one set under one `kid` (RFC 7517 §4.5 says they should
/// differ, but an issuer replacing a key under the same id publishes both
/// for a while): a token is checked against each, so the newer key's tokens
/// are not refused because the older key comes first; a key of neither
/// still fails.
#[tokio::test]
async fn keys_sharing_a_kid_are_each_tried() {
    let issuer = Issuer::new();
    let older = Issuer::new();
    let stranger = Issuer::new();
    let keys = TempDir::new("jwks-shared-kid");
    let section = issuer.token_section(&keys);
    let set =
        |i: &Issuer| serde_json::from_str::<serde_json::Value>(&i.jwks).unwrap()["keys"][0].clone();
    std::fs::write(
        keys.path().join("jwks.json"),
        json!({"keys": [set(&older), set(&issuer)]}).to_string(),
    )
    .unwrap();
    let proxy = Proxy::start(Setup {
        extra: format!("[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{section}"),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    for (who, token, status) in [
        ("the newer key", issuer.ed(&claims("acme")), 201),
        ("the older key", older.ed(&claims("acme")), 201),
        ("a key of neither", stranger.ed(&claims("acme")), 401),
    ] {
        let reply = upload(&client, DE, Some(&token)).await;
        assert_eq!(reply.status, status, "{who}: {reply:?}");
    }
    proxy.stop().await;
}

/// A set of one key without `kid` verifies tokens whatever `kid` they name:
/// the header's `kid` is a hint (RFC 7515 §4.1.4), and an issuer that
/// publishes one key often leaves its id out of the set but not out of its
/// tokens. The signature still decides: another key's token gets 401.
#[tokio::test]
async fn a_single_key_without_kid_verifies_tokens_that_name_one() {
    let issuer = Issuer::new();
    let stranger = Issuer::new();
    let keys = TempDir::new("jwks-single-no-kid");
    let section = issuer.token_section(&keys);
    let mut only: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&issuer.jwks).unwrap()["keys"][0].clone();
    only.as_object_mut().unwrap().remove("kid");
    std::fs::write(
        keys.path().join("jwks.json"),
        json!({"keys": [only]}).to_string(),
    )
    .unwrap();
    let proxy = Proxy::start(Setup {
        extra: format!("[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{section}"),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    for (who, token, status) in [
        (
            "the key, its token naming kid ed1",
            issuer.ed(&claims("acme")),
            201,
        ),
        ("another key", stranger.ed(&claims("acme")), 401),
    ] {
        let reply = upload(&client, DE, Some(&token)).await;
        assert_eq!(reply.status, status, "{who}: {reply:?}");
    }
    proxy.stop().await;
}

/// A key set is taken for what it can verify with: an RSA key, or a key
/// marked for encryption or for another algorithm (RFC 7517 §4.2–4.4), one
/// whose coordinates do not decode or one without `kid` among several, is
/// left out rather than failing the load (which kept the previous keys
/// verifying); and emptying the set revokes every key.
#[tokio::test]
async fn a_key_set_is_used_for_what_it_can_verify_and_emptied_revokes() {
    let issuer = Issuer::new();
    let keys = TempDir::new("jwks-rotation");
    let section = issuer.token_section(&keys);
    let jwks_path = keys.path().join("jwks.json");
    let mut set: serde_json::Value = serde_json::from_str(&issuer.jwks).unwrap();
    let ec = set["keys"][1].clone();
    let mut enc = ec.clone();
    enc["kid"] = json!("ecenc");
    enc["use"] = json!("enc");
    let mut es384 = ec.clone();
    es384["kid"] = json!("ec384");
    es384["alg"] = json!("ES384");
    let mut no_verify = ec.clone();
    no_verify["kid"] = json!("ecsign");
    no_verify["key_ops"] = json!(["sign"]);
    let rsa = json!({"kty": "RSA", "kid": "rsa1", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
    // Keys the JWK reader does not know at all: an ECDH-ES key, an X25519
    // key, a key type of the future (RFC 7517 §5: ignored, one by one).
    let mut ecdh = ec.clone();
    ecdh["kid"] = json!("ecdh");
    ecdh["use"] = json!("enc");
    ecdh["alg"] = json!("ECDH-ES");
    let x25519 = json!({"kty": "OKP", "crv": "X25519", "kid": "x1", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"});
    let future = json!({"kty": "AKP", "kid": "pq1", "alg": "ML-DSA-44", "pub": "AAAA"});
    // Keys it reads but cannot use: coordinates that do not decode (base64
    // with padding), and one without `kid` among several.
    let mut padded = ec.clone();
    padded["kid"] = json!("ecpad");
    padded["x"] = json!(format!("{}=", ec["x"].as_str().unwrap()));
    let mut no_kid = ec.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let unknown = [ecdh, x25519, future, padded, no_kid];
    set["keys"]
        .as_array_mut()
        .unwrap()
        .extend([enc, es384, no_verify, rsa]);
    set["keys"]
        .as_array_mut()
        .unwrap()
        .extend(unknown.iter().cloned());
    std::fs::write(&jwks_path, set.to_string()).unwrap();
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[timeouts]\nreload_poll = \"100ms\"\n[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{section}"
        ),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    let ec_key = EncodingKey::from_ec_der(&issuer.ec);
    for (kid, status) in [
        ("ec1", 201),
        ("ecenc", 401),
        ("ec384", 401),
        ("ecsign", 401),
    ] {
        let token = sign(Algorithm::ES256, kid, &ec_key, &claims("acme"));
        let reply = upload(&client, DE, Some(&token)).await;
        assert_eq!(reply.status, status, "{kid}: {reply:?}");
        if status == 201 {
            assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
        }
    }
    let token = issuer.ed(&claims("acme"));
    assert_eq!(upload(&client, DE, Some(&token)).await.status, 201);

    // The issuer removes its Ed25519 key, its set still holding keys the
    // reader does not know: the removal takes effect.
    let mut rotated = json!({"keys": [ec.clone()]});
    rotated["keys"]
        .as_array_mut()
        .unwrap()
        .extend(unknown.iter().cloned());
    std::fs::write(&jwks_path, rotated.to_string()).unwrap();
    eventually("the removed key is no longer used", async || {
        upload(&client, DE, Some(&token)).await.status == 401
    })
    .await;
    let reply = upload(&client, DE, Some(&issuer.ec(&claims("acme")))).await;
    assert_eq!(reply.status, 201, "{reply:?}");

    std::fs::write(&jwks_path, r#"{"keys": []}"#).unwrap();
    let ec_token = issuer.ec(&claims("acme"));
    eventually("the emptied key set revokes every key", async || {
        upload(&client, DE, Some(&ec_token)).await.status == 401
    })
    .await;
    let reply = upload(&client, DE, Some(&ec_token)).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.json()["error"], "invalid_tenant_token");
    proxy.stop().await;
}

/// With the token in a field of its own name, that name spelt with `_` for
/// `-` does not reach the data centre: one mapping fields to CGI-style
/// variables would read it as the token, though the proxy judged the
/// tenant without it (here by GeoIP: Germany, frankfurt), and credit the
/// upload to a tenant pinned elsewhere.
#[tokio::test]
async fn the_token_field_spelt_with_underscores_does_not_reach_the_data_centre() {
    let issuer = Issuer::new();
    let keys = TempDir::new("jwks-underscore");
    let section = issuer.token_section(&keys);
    let proxy = Proxy::start(Setup {
        extra: format!(
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{section}header = \"x-tenant-token\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let client = proxy.client();
    let token = issuer.ed(&claims("acme"));
    let reply = client
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", DE), ("x_tenant_token", &token)],
            "cpu=0.5",
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("residency-datacenter"), Some("frankfurt"));
    let received = proxy.upstream("frankfurt").last();
    assert!(
        !received.headers.contains_key("x_tenant_token"),
        "{:?}",
        received.headers
    );
    assert!(!received.headers.contains_key("residency-tenant"));

    // The dashed field is the token, and goes on as it came.
    let reply = client
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", DE), ("x-tenant-token", &token)],
            "cpu=0.5",
        )
        .await;
    assert_eq!(reply.header("residency-datacenter"), Some("zurich"));
    let received = proxy.upstream("zurich").last();
    assert_eq!(received.headers["x-tenant-token"], token.as_str());
    assert_eq!(received.headers["residency-tenant"], "acme");
    proxy.stop().await;
}

/// A refused token's error quotes its header (the JWT library's "unknown
/// variant `…`"), and the once-a-minute line says why: in the text log
/// (the default format) its line breaks and terminal escapes arrive
/// escaped, so a client cannot forge a line — an access line saying 201,
/// here — without signing anything (privacy audit, stop 68).
#[tokio::test]
async fn a_refused_tokens_header_cannot_forge_a_log_line() {
    let issuer = Issuer::new();
    let keys = TempDir::new("jwks-forge");
    let up = Upstream::start("zurich").await;
    let proxy = Binary::start(
        "token-forge",
        &datacenters_at(up.addr),
        &format!(
            "[[tenants]]\nname = \"acme\"\njurisdiction = \"ch\"\n{}\n[log]\nformat = \"text\"\n",
            issuer.token_section(&keys)
        ),
    )
    .await;
    let forged_line = "2026-12-07T00:00:00.000000Z  INFO residency_proxy::access: request \
                       request_id=\"forged\" status=201";
    let header = format!("{{\"alg\":\"EdDSA\\n{forged_line}\\u001b[2J\",\"kid\":\"ed1\"}}");
    let token = format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode(header));
    let auth = format!("Bearer {token}");
    let reply = proxy
        .client()
        .send(
            "POST",
            "/v1/telemetry",
            &[("x-forwarded-for", DE), ("authorization", &auth)],
            "cpu=0.5",
        )
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let log = proxy.log();
    let said = log
        .lines()
        .find(|l| l.contains("a tenant token was refused"))
        .unwrap_or_else(|| panic!("the refusal is said: {log}"));
    assert!(said.contains(r"EdDSA\n2026-12-07"), "escaped: {said}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\u{1b}'), "a terminal escape: {log}");
}
