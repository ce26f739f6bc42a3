//! The customer-facing log endpoints (`transparency.address`).
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the page where a customer checks a receipt in the browser ([`crate::page`]) |
//! | `GET /checkpoint` | the latest signed checkpoint (C2SP tlog-checkpoint, text); `Residency-Checkpoint-Covered-At`: when it last covered every record (Unix seconds, informational) |
//! | `GET /tile/<L>/<N>[.p/<W>]` | a C2SP tlog-tiles hash tile (`application/octet-stream`, immutable) |
//! | `GET /tile/entries/<N>[.p/<W>]` | an entry bundle: the records, each after its big-endian `u16` length (gzip) |
//! | `GET /key` | the verifier key, `name+keyid+base64` |
//! | `GET /proof/{request_id}.tlog-proof` | a C2SP tlog-proof of the record: index, inclusion path, the latest checkpoint |
//! | `GET /proof/inclusion?index=N[&size=M]` | audit path for leaf N in the tree of M leaves (default: the latest checkpoint's size) |
//! | `GET /proof/consistency?from=A[&to=B]` | consistency proof from size A to B (default: the latest checkpoint's size) |
//! | `GET /records/{request_id}` | the record for a request id and its leaf index |
//! | `GET /entries/{index}` | the record at a leaf index |
//! | `GET /generations` | the log's generations (origins), oldest first: a directory log rolls to a new origin at `transparency.max_records` |
//! | `GET /generations/<n>/…` | every path above (but `/`) for generation `n`, sealed or current; the root serves the current one |
//! | `GET /<n>/…` | the same as `/generations/<n>/…`: generation `n` ≥ 2 has origin `<origin>/<n>`, so where the log's origin is its URL, each generation's origin is its URL prefix too (tlog-tiles' SHOULD) |
//!
//! The tiles are the standard API (<https://c2sp.org/tlog-tiles>): any
//! tlog client computes proofs from them. The other paths are conveniences
//! the log computes from the same tiles (answers read files: the listener
//! runs this on the blocking pool). Hashes are lowercase hex; records are
//! given as the exact logged text. Tiles and proofs are served only for
//! sizes up to the latest checkpoint (a proof is useful only against a
//! signed tree head); a record (`/entries/{index}`, `/records/{id}`) is
//! served once it is durable, before a checkpoint covers it.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use residency_log::api::{ConsistencyProof, Entry, GenerationInfo, Generations, InclusionProof};
use residency_log::backend::LogError;
use residency_log::merkle::Hash;
use residency_log::storage::{Generation, Log};
use residency_log::tiles::Tile;
use residency_log::tlog_proof::TlogProof;
use serde::Serialize;

/// Answers one request (bodies are never read).
pub fn answer<B>(log: &Log, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let path = req.uri().path();
    if let Some(page) = crate::page::answer(path) {
        return page;
    }
    let query = req.uri().query().unwrap_or("");
    if path == "/generations" {
        // Its sizes are the checkpoints': not before this replica has one.
        if !log.current().confirmed() {
            return unconfirmed();
        }
        return generations(log);
    }
    let current = log.current();
    let numbered = path.strip_prefix("/generations/").or_else(|| {
        // `/<n>/…`: no other path starts with a digit.
        let rest = path.strip_prefix('/')?;
        rest.starts_with(|c: char| c.is_ascii_digit())
            .then_some(rest)
    });
    if let Some(rest) = numbered {
        let (number, rest) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let Some(generation) = number.parse().ok().and_then(|n| log.generation(n)) else {
            return error(
                StatusCode::NOT_FOUND,
                "no such generation of the log: see /generations",
            );
        };
        // A sealed generation's last checkpoint covers it for good.
        let covered_at = (generation.number() == current.number()).then(|| log.covered_at());
        return answer_in(&generation, rest, query, covered_at, true, req);
    }
    // The root serves the current generation: after a roll its tiles are
    // the next generation's, so they are fixed only for a log that never
    // rolls.
    let fixed = log.settings().max_records == u64::MAX;
    answer_in(&current, path, query, Some(log.covered_at()), fixed, req)
}

/// `GET /generations`.
fn generations(log: &Log) -> Response<Full<Bytes>> {
    let all = log.generations();
    let last = all.last().map_or(0, |g| g.number());
    json(&Generations {
        generations: all
            .iter()
            .map(|g| GenerationInfo {
                generation: g.number(),
                origin: g.origin().to_string(),
                key: g.signer().verifier_key(),
                size: g.latest().size,
                sealed: g.number() != last,
                prefix: format!("/generations/{}/", g.number()),
            })
            .collect(),
    })
}

/// Answers `path` from one generation of the log.
/// `fixed`: what is served at this prefix never changes (its tiles may be
/// cached for good).
fn answer_in<B>(
    log: &Generation,
    path: &str,
    query: &str,
    covered_at: Option<i64>,
    fixed: bool,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    if !log.confirmed() && path != "/key" {
        return unconfirmed();
    }
    let latest = log.latest();
    match path {
        "/checkpoint" => {
            let mut resp = text(latest.note.clone());
            if let Some(at) = covered_at {
                resp.headers_mut()
                    .insert("residency-checkpoint-covered-at", HeaderValue::from(at));
            }
            resp
        }
        "/key" => text(format!("{}\n", log.signer().verifier_key())),
        "/proof/inclusion" => {
            let (index, size) = match (
                crate::query::integer(query, "index"),
                crate::query::integer(query, "size"),
            ) {
                (Ok(Some(index)), Ok(size)) => (index, size.unwrap_or(latest.size)),
                (Err(bad), _) | (_, Err(bad)) => return error(StatusCode::BAD_REQUEST, &bad),
                (Ok(None), _) => return error(StatusCode::BAD_REQUEST, "index=N is required"),
            };
            let latest = match log.signed_for(size) {
                Ok(latest) => latest,
                Err(e) => return unavailable(&e),
            };
            if size > latest.size {
                return error(StatusCode::NOT_FOUND, &not_signed(size, latest.size));
            }
            match log.inclusion_proof(index, size) {
                Err(e) => unavailable(&e),
                Ok(Some((leaf, path))) => json(&InclusionProof {
                    index,
                    size,
                    leaf_hash: residency_core::hex::encode(&leaf),
                    hashes: hexes(&path),
                }),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    &format!("index {index} is not in the tree of size {size}"),
                ),
            }
        }
        "/proof/consistency" => {
            let (from, to) = match (
                crate::query::integer(query, "from"),
                crate::query::integer(query, "to"),
            ) {
                (Ok(Some(from)), Ok(to)) => (from, to.unwrap_or(latest.size)),
                (Err(bad), _) | (_, Err(bad)) => return error(StatusCode::BAD_REQUEST, &bad),
                (Ok(None), _) => return error(StatusCode::BAD_REQUEST, "from=A is required"),
            };
            let latest = match log.signed_for(to) {
                Ok(latest) => latest,
                Err(e) => return unavailable(&e),
            };
            if to > latest.size {
                return error(StatusCode::NOT_FOUND, &not_signed(to, latest.size));
            }
            match log.consistency_proof(from, to) {
                Err(e) => unavailable(&e),
                Ok(Some(path)) => json(&ConsistencyProof {
                    from,
                    to,
                    hashes: hexes(&path),
                }),
                Ok(None) => error(
                    StatusCode::BAD_REQUEST,
                    &format!("need 0 < from <= to; got from={from} to={to}"),
                ),
            }
        }
        _ if path.starts_with("/tile/") => {
            let known = req.headers().get(header::IF_NONE_MATCH);
            tile(log, &path[1..], latest.size, fixed, known)
        }
        _ if path.starts_with("/proof/") && path.ends_with(".tlog-proof") => {
            let id = &path["/proof/".len()..path.len() - ".tlog-proof".len()];
            let index = match log.index_of(id) {
                Err(e) => return unavailable(&e),
                Ok(None) => return error(StatusCode::NOT_FOUND, "no such record"),
                Ok(Some(index)) => index,
            };
            let latest = match log.signed_for(index.saturating_add(1)) {
                Ok(latest) => latest,
                Err(e) => return unavailable(&e),
            };
            let record = match log.record(index) {
                Ok(Some(record)) => record,
                Ok(None) => return error(StatusCode::NOT_FOUND, "no such record"),
                Err(e) => return unavailable(&e),
            };
            match log.inclusion_proof(index, latest.size) {
                Err(e) => unavailable(&e),
                Ok(Some((_, hashes))) if index < latest.size => {
                    // The record itself on the extra line (tlog-proof's
                    // place for what reconstructs the leaf): one file holds
                    // all a verifier needs but the key.
                    let proof = TlogProof {
                        extra: Some(record.to_vec()),
                        index,
                        path: hashes,
                        checkpoint: latest.note.clone(),
                    };
                    text(proof.encode())
                }
                _ => error(StatusCode::NOT_FOUND, &not_signed(index + 1, latest.size)),
            }
        }
        _ => {
            let index = if let Some(id) = path.strip_prefix("/records/") {
                match log.index_of(id) {
                    Ok(index) => index,
                    Err(e) => return unavailable(&e),
                }
            } else if let Some(i) = path.strip_prefix("/entries/") {
                i.parse::<u64>().ok()
            } else {
                return error(
                    StatusCode::NOT_FOUND,
                    "try / /checkpoint /tile/<L>/<N>[.p/<W>] /tile/entries/<N>[.p/<W>] /key /proof/inclusion?index= /proof/consistency?from= /records/{request_id} /entries/{index} /generations",
                );
            };
            let Some(index) = index else {
                return error(StatusCode::NOT_FOUND, "no such record");
            };
            match log.record(index) {
                Err(e) => unavailable(&e),
                Ok(Some(bytes)) => json(&Entry {
                    index,
                    record: String::from_utf8_lossy(&bytes).into_owned(),
                }),
                Ok(None) => error(StatusCode::NOT_FOUND, "no such record"),
            }
        }
    }
}

/// A hash tile or entry bundle; 404 for a name the spec does not allow or
/// a tile the latest checkpoint does not cover. 304, read from nothing,
/// for a client that has it (`If-None-Match` with its entity tag, or `*`).
fn tile(
    log: &Generation,
    path: &str,
    signed: u64,
    fixed: bool,
    known: Option<&HeaderValue>,
) -> Response<Full<Bytes>> {
    let Some(t) = Tile::parse(path) else {
        return error(
            StatusCode::NOT_FOUND,
            "not a tlog-tiles path: tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]",
        );
    };
    // A tile's bytes are fixed by its path and its generation (its
    // origin and key: the key ID covers both), so a generation's key ID
    // tags every tile of it: the same path at the root of a log that
    // rolled is another generation's tile, with another tag. Weak: the
    // bytes of a gzipped bundle may differ between versions of the proxy.
    let etag = entity_tag(log);
    let covered = t.needs_size().is_some_and(|needs| needs <= signed);
    if covered && known.is_some_and(|k| none_match_has(k.as_bytes(), &etag)) {
        let mut resp = respond(StatusCode::NOT_MODIFIED, "", Vec::new());
        // (No representation's metadata: RFC 9110 §15.4.5.)
        resp.headers_mut().remove(header::CONTENT_TYPE);
        tile_fields(resp.headers_mut(), fixed, &etag);
        return resp;
    }
    let bytes = match log.tile(t) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let needs = t.needs_size().unwrap_or(u64::MAX);
            return error(StatusCode::NOT_FOUND, &not_signed(needs, signed));
        }
        Err(e) => return unavailable(&e),
    };
    let (body, gzipped) = match t.level {
        Some(_) => (bytes, false),
        None => match gzip(&bytes) {
            Some(z) => (z, true),
            None => (bytes, false),
        },
    };
    let mut resp = respond(StatusCode::OK, "application/octet-stream", body);
    let h = resp.headers_mut();
    tile_fields(h, fixed, &etag);
    if gzipped {
        // The spec allows gzip without negotiation for entry bundles.
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// A tile's validator and caching, on its 200 and its 304 alike (RFC 9110
/// §15.4.5): a tile's content is fixed by its name, within one
/// generation; at the root of a log that rolls it is revalidated (a roll
/// changes it).
fn tile_fields(h: &mut http::HeaderMap, fixed: bool, etag: &str) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if fixed {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
}

/// The weak entity tag of every tile of `log`'s generation: its key ID.
fn entity_tag(log: &Generation) -> String {
    format!(
        "W/\"{}\"",
        residency_core::hex::encode(&log.verifier().key_id())
    )
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, RFC 9110
/// §8.8.3.2: `W/` ignored on both) or is `*`.
fn none_match_has(list: &[u8], etag: &str) -> bool {
    fn opaque(tag: &[u8]) -> &[u8] {
        let tag = tag.trim_ascii();
        tag.strip_prefix(b"W/").unwrap_or(tag)
    }
    let ours = opaque(etag.as_bytes());
    list.trim_ascii() == b"*" || list.split(|b| *b == b',').any(|tag| opaque(tag) == ours)
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(bytes).ok()?;
    z.finish().ok()
}

fn not_signed(size: u64, latest: u64) -> String {
    format!("no signed checkpoint covers size {size} yet (latest: {latest}); retry after the next checkpoint")
}

fn hexes(path: &[Hash]) -> Vec<String> {
    path.iter()
        .map(|h| residency_core::hex::encode(h))
        .collect()
}

fn text(body: String) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        body.into_bytes(),
    )
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(StatusCode::OK, "application/json", body)
}

/// 503 for a read the log's storage (a fleet's database) did not answer:
/// not a 404, which would tell a verifier its record does not exist.
fn unavailable(e: &LogError) -> Response<Full<Bytes>> {
    tracing::warn!(error = %e, "a transparency log read failed");
    retry_shortly("the log's storage did not answer; retry shortly")
}

/// A fleet replica that started while its commits could not be known to
/// be replicated has only the empty tree's checkpoint: its readers may have
/// seen the log larger. 503 for all of it but its key.
fn unconfirmed() -> Response<Full<Bytes>> {
    retry_shortly(
        "this replica has not yet confirmed the log's checkpoint (a commit after reading it must reach the database's synchronous standby); retry shortly",
    )
}

/// 503 with `Retry-After: 1`.
fn retry_shortly(message: &str) -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, "application/json", body.into_bytes())
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // Every answer is data, never a page: a browser must not read a record
    // or a tile as HTML or script whatever its bytes look like.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
