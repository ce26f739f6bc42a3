//! Uploads land in a permitted data centre and only there; refusals reach
//! no upstream. Over HTTP/1.1 and h2.

use crate::support::*;

async fn each_version(f: impl AsyncFn(Http)) {
    for v in [Http::One, Http::Two] {
        f(v).await;
    }
}

#[tokio::test]
async fn origins_land_in_their_jurisdiction_only() {
    let proxy = Proxy::start(Setup::default()).await;
    each_version(async |v| {
        let client = proxy.client().version(v);
        for (origin, dc, jurisdiction, country) in [
            (CH, "zurich", "ch", "CH"),
            (DE, "frankfurt", "eu", "DE"),
            // uk may store in uk (priority 2) or eu (priority 1): eu wins
            (GB, "frankfurt", "uk", "GB"),
            (US, "virginia", "us", "US"),
        ] {
            let before = proxy.counts();
            let body = format!("upload from {origin} over {v:?}");
            let reply = client.upload_from(origin, &body).await;
            assert_eq!(reply.status, 201, "{origin} {v:?}: {:?}", reply.body);
            assert_eq!(reply.header("residency-datacenter"), Some(dc));
            assert_eq!(reply.header("residency-jurisdiction"), Some(jurisdiction));
            assert!(reply.header("x-request-id").is_some());
            let after = proxy.counts();
            for (name, n) in &after {
                let want = before[name] + usize::from(name == dc);
                assert_eq!(*n, want, "{origin} {v:?}: upstream {name}");
            }
            let got = proxy.upstream(dc).last();
            assert_eq!(got.body, body.as_bytes());
            assert_eq!(got.headers["residency-origin-country"], country);
            assert_eq!(got.headers["residency-jurisdiction"], jurisdiction);
            assert_eq!(got.headers["x-forwarded-proto"], "https");
            assert_eq!(
                got.headers["x-forwarded-for"],
                format!("{origin}, 127.0.0.1").as_str()
            );
            assert_eq!(
                got.headers["x-request-id"],
                reply.header("x-request-id").unwrap()
            );
            assert_eq!(got.path, "/v1/telemetry");
            // RFC 9110 §7.6.3: the proxy names itself, with the protocol
            // it received the request in.
            let via = if v == Http::Two { "2" } else { "1.1" };
            assert_eq!(
                got.headers["via"],
                format!("{via} residency-proxy").as_str()
            );
        }
    })
    .await;
    proxy.stop().await;
}
