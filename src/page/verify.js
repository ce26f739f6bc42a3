// The verdict, in the browser: the same steps, in the same order, as
// residency_log::verdict::check in Rust (crates/log/src/verdict.rs), which
// `residency-proxy verify` runs. Both are held to the shared vectors in
// crates/log/vectors/verify.json. Ed25519 and SHA-256 come from WebCrypto;
// nothing is sent anywhere.

const ALG_ED25519 = 0x01;
const ALG_COSIGNATURE = 0x04;
const MAX_NOTE_BYTES = 1 << 20;
const MAX_SIGNATURES = 100;
const SIGNATURE_PREFIX = "\u2014 ";
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const UTF8 = new TextEncoder();

export const STEPS = [
  "key", "receipt", "receipt_signature", "outcome", "checkpoint", "witnesses",
  "coverage", "inclusion", "previous_checkpoint", "consistency", "file",
];

// The steps whose failure leaves the receipt NOT CHECKED, not INVALID:
// nothing was found wrong, the check cannot be made yet (a checkpoint that
// does not cover the receipt's index). As Step::not_checked in Rust. Such a
// failure does not stop the history steps (previous_checkpoint,
// consistency), which need no inclusion: one that fails is the verdict,
// INVALID (see run).
export const NOT_CHECKED = ["coverage"];

class Failure extends Error {
  constructor(step, message) {
    super(message);
    this.step = step;
  }
}

function fail(step, message) {
  throw new Failure(step, message);
}

// --- bytes ---------------------------------------------------------------

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex32(text) {
  if (typeof text !== "string" || !/^[0-9a-fA-F]{64}$/.test(text)) return null;
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// Standard, padded base64 only (as Rust's STANDARD engine); `loose` takes
// non-zero unused bits in the last character, as Go's base64.StdEncoding
// does for signature lines (a line from an unknown key is then ignored, not
// taken for a malformed note).
export function unbase64(text, loose = false) {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) return null;
  let binary;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  const out = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  // Canonical: the unused bits of the last character must be zero.
  if (!loose && base64(out) !== text) return null;
  return out;
}

export function base64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// A signature that does not verify is `false`; a browser without
// WebCrypto Ed25519 is an error, never a verdict.
async function ed25519Verify(publicKey, message, signature) {
  let key;
  try {
    key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    if (e.name === "DataError") return false; // not a valid public key
    throw new Error(`this browser cannot check Ed25519 signatures (${e.name}: ${e.message}); use a current browser, or residency-proxy verify`);
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
}

// Why this browser cannot run the checks, or null.
export async function unsupported() {
  if (!globalThis.isSecureContext || !globalThis.crypto?.subtle) {
    return "This page must be opened over HTTPS (or on this machine's loopback address): browsers only offer the cryptography it needs to secure pages.";
  }
  try {
    await crypto.subtle.importKey("raw", new Uint8Array(32), { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    if (e.name !== "DataError") {
      return "This browser cannot check Ed25519 signatures (WebCrypto Ed25519: Chrome 137, Firefox 129, Safari 17 or later). Use a current browser, or residency-proxy verify.";
    }
  }
  return null;
}

// --- signed notes (C2SP signed-note) ---------------------------------------

// Unicode White_Space, as Rust's `char::is_whitespace` has it (JavaScript's
// `\s` differs: it takes U+FEFF and leaves U+0085), no control character
// (Rust's `char::is_control`: U+0000-001F, U+007F-009F) and no '+'.
function checkName(name) {
  return name.length > 0 && !/[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000+\u0000-\u001f\u007f-\u009f]/u.test(name);
}

// Whether an Ed25519 public key is a point of small order, in any
// encoding: as residency_log::note::small_order (libsodium's list of y,
// the sign bit ignored). With one, R = identity and S = 0 verify any
// message.
const SMALL_ORDER_Y = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];
function smallOrder(publicKey) {
  const y = Uint8Array.from(publicKey);
  y[31] &= 0x7f;
  return SMALL_ORDER_Y.includes(hex(y));
}

// `<name>+<key id hex>+<base64(alg || 32-byte key)>`, key id checked;
// errors worded as residency_log::note's.
export async function parseVkey(vkey, alg) {
  vkey = vkey.trim();
  const malformed = (reason) => new Error(`malformed verifier key ${JSON.stringify(vkey)}: ${reason}`);
  const parts = vkey.split("+");
  if (parts.length < 3) throw malformed("expected <name>+<key id>+<base64 key>");
  const [name, idHex] = parts;
  const b64 = parts.slice(2).join("+");
  if (!checkName(name)) {
    throw new Error(`invalid key name ${JSON.stringify(name)}: it must be non-empty and contain no whitespace, control character or '+'`);
  }
  if (!/^[0-9a-fA-F]{8}$/.test(idHex)) throw malformed("key id must be 8 hex digits");
  const raw = unbase64(b64);
  if (raw === null) throw malformed("key is not standard base64");
  if (raw[0] !== alg) {
    throw malformed(alg === ALG_ED25519
      ? "only Ed25519 keys (type byte 0x01) are supported"
      : "a witness key must be an Ed25519 cosignature/v1 key (type byte 0x04): create one with `residency-proxy keygen --witness`");
  }
  if (raw.length !== 33) throw malformed("an Ed25519 key must be 32 bytes");
  const publicKey = raw.slice(1);
  if (smallOrder(publicKey)) {
    throw malformed("a small-order Ed25519 point, for which signatures can be made without any private key: no key pair makes it");
  }
  const id = (await sha256(concat(UTF8.encode(name + "\n"), [alg], publicKey))).slice(0, 4);
  if (hex(id) !== idHex.toLowerCase()) {
    throw new Error(`verifier key ${JSON.stringify(vkey)} claims key id ${idHex.toLowerCase()}, but its name and public key give ${hex(id)}`);
  }
  // One key, one spelling: the key id in lower case (the base64 is
  // canonical already: unbase64 takes no other).
  return { name, keyId: id, publicKey, vkey, canonical: `${name}+${hex(id)}+${b64}` };
}

// The key of another generation of the log whose key is `key`, as the
// log's list of generations gives it (`listed`, for the generation whose
// origin is `origin`). A log signs every generation with one key, each
// under its own origin's name; the list is not signed, so its key is
// taken only if it is well-formed (its key ID recomputed from its name and
// public key), named `origin`, and `key`'s public key. Throws why not.
export async function generationKey(key, listed, origin) {
  const own = await parseVkey(key, ALG_ED25519);
  let theirs;
  try {
    theirs = await parseVkey(String(listed), ALG_ED25519);
  } catch (e) {
    throw new Error(`its listed key is not usable: ${e.message}`);
  }
  if (theirs.name !== origin) {
    throw new Error(`its listed key is named \`${theirs.name}\`, not \`${origin}\``);
  }
  if (!equal(theirs.publicKey, own.publicKey)) {
    throw new Error(`its listed key has another public key than ${label(own)}`);
  }
  return theirs;
}

function splitNote(note) {
  const length = UTF8.encode(note).length;
  if (length > MAX_NOTE_BYTES) throw new Error(`note is ${length} bytes, more than the limit of ${MAX_NOTE_BYTES}`);
  const control = /[\u0000-\u0009\u000b-\u001f]/.exec(note);
  if (control) {
    const code = control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
    throw new Error(`note contains control character U+${code}; only newline is allowed`);
  }
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("note has no blank line between its text and its signatures");
  const text = note.slice(0, split + 1);
  const signatures = note.slice(split + 2);
  if (signatures === "") throw new Error("note has no signature lines after the blank line");
  const lines = signatures.split("\n");
  if (lines.pop() !== "") throw new Error(`signature line ${lines.length}: does not end with a newline`);
  if (lines.length > MAX_SIGNATURES) throw new Error(`note has more than ${MAX_SIGNATURES} signature lines`);
  return { text, lines };
}

function parseSignatureLine(line, i) {
  const bad = (reason) => new Error(`signature line ${i + 1}: ${reason}`);
  if (!line.startsWith(SIGNATURE_PREFIX)) throw bad("does not start with an em dash and a space");
  const rest = line.slice(SIGNATURE_PREFIX.length);
  const space = rest.indexOf(" ");
  if (space < 0) throw bad("has no space between the key name and the signature");
  const name = rest.slice(0, space);
  if (!checkName(name)) throw bad("has an invalid key name");
  const payload = unbase64(rest.slice(space + 1), true);
  if (payload === null) throw bad("signature is not standard base64");
  if (payload.length < 5) throw bad("signature is too short to hold a key id and a signature");
  return { name, payload };
}

function label(key) {
  return `${key.name}+${hex(key.keyId)}`;
}

// Verifies a note with `key`: returns its text (without the blank line).
async function openNote(note, key) {
  const { text, lines } = splitNote(note);
  let verified = false;
  for (const [i, line] of lines.entries()) {
    const { name, payload } = parseSignatureLine(line, i);
    if (name !== key.name || !equal(payload.slice(0, 4), key.keyId)) continue;
    if (!(await ed25519Verify(key.publicKey, UTF8.encode(text), payload.slice(4)))) {
      throw new Error(`signature by key ${label(key)} does not verify: the note was altered or signed by another key`);
    }
    verified = true;
  }
  if (!verified) throw new Error(`no signature by key ${label(key)}`);
  return text;
}

function parseCheckpointBody(text) {
  const bad = (line, reason) => new Error(`checkpoint line ${line}: ${reason}`);
  if (!text.endsWith("\n")) throw bad(text.split("\n").length, "does not end with a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw bad(lines.length + 1, "missing: a checkpoint needs origin, tree size and root hash lines");
  const [origin, size, root, ...extensions] = lines;
  if (origin === "") throw bad(1, "origin is empty");
  const empty = extensions.indexOf("");
  if (empty >= 0) throw bad(empty + 4, "extension line is empty");
  if (!/^(0|[1-9][0-9]*)$/.test(size) || BigInt(size) > 0xffffffffffffffffn) {
    throw bad(2, `tree size ${JSON.stringify(size)} is not a decimal number`);
  }
  const rootBytes = unbase64(root);
  if (rootBytes === null) throw bad(3, `root hash ${JSON.stringify(root)} is not padded standard base64`);
  if (rootBytes.length !== 32) throw bad(3, `root hash is ${rootBytes.length} bytes, expected 32`);
  return { origin, size: BigInt(size), root: rootBytes, extensions };
}

export async function openCheckpoint(note, key) {
  let checkpoint;
  try {
    checkpoint = parseCheckpointBody(await openNote(note, key));
  } catch (e) {
    throw new Error(`the checkpoint: ${e.message}`);
  }
  if (checkpoint.origin !== key.name) {
    throw new Error(`the checkpoint is for log \`${checkpoint.origin}\`, the key is for \`${key.name}\``);
  }
  return checkpoint;
}

// The cosignatures on a note (C2SP tlog-cosignature): every line whose
// payload has a cosignature's shape, with its timestamp; `verified` when a
// key in `keys` checks it. A line by one of `keys` (its name and key ID)
// without that shape does not verify (timestamp null), as in the Rust
// verifier: a known key's malformed line is not skipped.
export async function cosignatures(note, keys) {
  const { text, lines } = splitNote(note);
  const out = [];
  for (const [i, line] of lines.entries()) {
    const { name, payload } = parseSignatureLine(line, i);
    const key = keys.find((k) => k.name === name && equal(k.keyId, payload.slice(0, 4)));
    if (payload.length !== 4 + 8 + 64) {
      if (key) out.push({ name, keyId: hex(payload.slice(0, 4)), timestamp: null, verified: false });
      continue;
    }
    const ts = new DataView(payload.buffer, payload.byteOffset + 4, 8).getBigUint64(0);
    let verified = null;
    if (key) {
      const message = UTF8.encode(`cosignature/v1\ntime ${ts}\n${text}`);
      verified = ts <= 0x7fffffffffffffffn && (await ed25519Verify(key.publicKey, message, payload.slice(12)));
    }
    out.push({ name, keyId: hex(payload.slice(0, 4)), timestamp: ts, verified });
  }
  return out;
}

// --- receipts and records --------------------------------------------------

// The `Residency-Receipt` header value (or the whole header line).
// ASCII whitespace trimmed from both ends, as Rust's `trim_ascii` (the
// Rust parser's): `trim` also takes U+FEFF, and Rust's `trim` U+0085.
function trimAscii(s) {
  return s.replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, "");
}

export function parseReceipt(text) {
  const bad = (m) => new Error(`the receipt: not a receipt: ${m}`);
  text = trimAscii(text);
  const colon = text.indexOf(":");
  if (colon >= 0 && trimAscii(text.slice(0, colon)).toLowerCase() === "residency-receipt") {
    text = trimAscii(text.slice(colon + 1));
  }
  let version = null, log = null, index = null, record = null, signature = null;
  for (const member of text.split(",")) {
    const trimmed = trimAscii(member);
    const eq = trimmed.indexOf("=");
    if (eq < 0) throw bad("expected key=value members");
    const key = trimmed.slice(0, eq);
    const value = trimmed.slice(eq + 1);
    const bytes = () => {
      if (!value.startsWith(":") || !value.endsWith(":") || value.length < 2) return null;
      return unbase64(value.slice(1, -1));
    };
    if (key === "v") version = value;
    else if (key === "log") {
      if (value.length < 2 || !value.startsWith('"') || !value.endsWith('"')) throw bad("log must be a quoted string");
      log = value.slice(1, -1);
    } else if (key === "index") {
      if (!/^[0-9]+$/.test(value) || BigInt(value) > 0xffffffffffffffffn) throw bad("index is not a non-negative integer");
      index = BigInt(value);
    } else if (key === "record") {
      record = bytes();
      if (record === null) throw bad("record is not :base64:");
    } else if (key === "sig") {
      signature = bytes();
      if (signature === null) throw bad("sig is not :base64:");
      if (signature.length !== 64) throw bad("sig is not a 64-byte Ed25519 signature");
    }
  }
  if (version === null) throw bad("missing v");
  if (version !== "1") throw new Error(`the receipt: receipt version ${version} is not supported (this verifier reads v=1)`);
  if (log === null) throw bad("missing log");
  if (index === null) throw bad("missing index");
  if (record === null) throw bad("missing record");
  return { log, index, record, signature };
}

// An unsigned receipt for a record fetched by request id.
export function unsignedReceipt(log, index, recordText) {
  return `v=1, log="${log}", index=${index}, record=:${base64(UTF8.encode(recordText))}:`;
}

// A key given twice in one object.
class RepeatedField extends Error {
  constructor(field) {
    super(`the field \`${field}\` is repeated`);
    this.field = field;
  }
}

// A number with a fraction or an exponent, kept as written: serde_json
// reads none of them as an integer field (`1.0` is not a `u8`).
class JsonFloat {
  constructor(text) {
    this.text = text;
  }
}

// JSON read as serde_json reads a record (the Rust reader `verify` uses):
// a key repeated in an object is an error (serde: "duplicate field"), a
// lone surrogate in a string is an error, integers past 2^53 are BigInts,
// other numbers JsonFloats. JSON.parse would keep a repeated key's last
// value, where another reader may keep its first.
function strictJson(text) {
  let i = 0;
  const fail = (what) => {
    throw new Error(`${what} at character ${i}`);
  };
  const token = (re) => {
    re.lastIndex = i;
    const m = re.exec(text);
    if (m) i = re.lastIndex;
    return m;
  };
  const WS = /[ \t\n\r]*/y;
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
  const LITERAL = /true|false|null/y;
  const string = () => {
    const m = token(STRING);
    if (!m) fail("a malformed string");
    const s = JSON.parse(m[0]);
    if (typeof s.isWellFormed === "function" && !s.isWellFormed()) fail("a lone surrogate in a string");
    return s;
  };
  const value = (depth) => {
    if (depth > 128) fail("nesting too deep"); // serde_json's limit
    token(WS);
    if (text[i] === "{" || text[i] === "[") {
      const object = text[i] === "{";
      const close = object ? "}" : "]";
      const out = object ? {} : [];
      const seen = new Set();
      i++;
      token(WS);
      if (text[i] === close) {
        i++;
        return out;
      }
      for (;;) {
        if (object) {
          token(WS);
          const key = string();
          if (seen.has(key)) throw new RepeatedField(key);
          seen.add(key);
          token(WS);
          if (text[i] !== ":") fail("expected ':'");
          i++;
          // A key such as `__proto__` is a field like any other.
          Object.defineProperty(out, key, { value: value(depth + 1), enumerable: true, writable: true, configurable: true });
        } else {
          out.push(value(depth + 1));
        }
        token(WS);
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === close) {
          i++;
          return out;
        }
        fail(`expected ',' or '${close}'`);
      }
    }
    if (text[i] === '"') return string();
    const literal = token(LITERAL);
    if (literal) return JSON.parse(literal[0]);
    const number = token(NUMBER);
    if (number) {
      const n = Number(number[0]);
      // serde_json reads `-0` as a float (-0.0), which no integer field
      // takes: so does this reader.
      if (number[1] || number[2] || Object.is(n, -0)) return new JsonFloat(number[0]);
      return Number.isSafeInteger(n) ? n : BigInt(number[0]);
    }
    fail("an unexpected character");
  };
  const out = value(0);
  token(WS);
  if (i !== text.length) fail("trailing characters");
  return out;
}

// A decision record, read as the Rust reader reads it (serde, crates/log
// record.rs): exactly its fields, each of its type; a field that may be
// null may also be absent (and reads as null).
function parseRecord(bytes) {
  // In the words of `verify` (verdict.rs, record_error).
  const refuse = (why) => new Error(`the receipt's record: ${why}`);
  let record;
  try {
    record = strictJson(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch (e) {
    throw refuse(e instanceof RepeatedField ? `the field \`${e.field}\` is repeated` : "not JSON");
  }
  const str = (v) => typeof v === "string";
  const optStr = (v) => v === undefined || v === null || str(v);
  const obj = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof JsonFloat);
  const u64 = (v) => (Number.isSafeInteger(v) && v >= 0) || (typeof v === "bigint" && v >= 0n && v < 2n ** 64n);
  const upTo = (max) => (v) => Number.isSafeInteger(v) && v >= 0 && v <= max;
  const absent = (v) => v === undefined || v === null;
  // Only the fields a record has (the Rust reader refuses others).
  const only = (o, names) => obj(o) && Object.keys(o).every((k) => names.includes(k));
  const fields = ["v", "request_id", "time", "outcome", "reason", "client", "country", "jurisdiction",
    "datacenter", "also_sent_to", "upstream_status", "body", "policy_sha256", "geoip", "tenant", "summary"];
  const known = only(record, fields) && only(record.client, ["source", "address"]) &&
    only(record.geoip, ["build_epoch", "sha256"]) && (absent(record.body) || only(record.body, ["sha256", "bytes"])) &&
    (absent(record.tenant) || only(record.tenant, ["name", "source", "origin_jurisdiction"])) &&
    (absent(record.summary) || only(record.summary, ["count", "request_ids_sha256", "first", "last"]));
  if (!known) throw refuse("not a decision record");
  const { client, body, geoip, tenant, summary } = record;
  const ok = upTo(255)(record.v) && str(record.request_id) && str(record.time) &&
    ["stored", "rejected", "refused"].includes(record.outcome) && optStr(record.reason) &&
    optStr(client.source) && optStr(client.address) &&
    optStr(record.country) && optStr(record.jurisdiction) && optStr(record.datacenter) &&
    // A list when present; never null (serde reads an absent one as empty).
    (record.also_sent_to === undefined || (Array.isArray(record.also_sent_to) && record.also_sent_to.every(str))) &&
    (absent(record.upstream_status) || upTo(65535)(record.upstream_status)) &&
    (absent(body) || (str(body.sha256) && u64(body.bytes))) &&
    str(record.policy_sha256) && u64(geoip.build_epoch) && str(geoip.sha256) &&
    (absent(tenant) || (str(tenant.name) && str(tenant.source) && optStr(tenant.origin_jurisdiction))) &&
    (absent(summary) || (u64(summary.count) && str(summary.request_ids_sha256) && str(summary.first) && str(summary.last)));
  if (!ok) throw refuse("not a decision record");
  for (const name of ["reason", "country", "jurisdiction", "datacenter", "upstream_status", "body", "tenant", "summary"]) {
    if (record[name] === undefined) record[name] = null;
  }
  for (const name of ["source", "address"]) {
    if (client[name] === undefined) client[name] = null;
  }
  if (record.also_sent_to === undefined) record.also_sent_to = [];
  if (tenant && tenant.origin_jurisdiction === undefined) tenant.origin_jurisdiction = null;
  return record;
}

function signedMessage(log, index, leaf) {
  return UTF8.encode(`residency-receipt/v1\n${log}\n${index}\n${hex(leaf)}\n`);
}

// "2026-12-02T10:41:07.123Z" as "2 Dec 2026 10:41 UTC".
export function plainTime(time) {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})/.exec(time);
  const month = m && MONTHS[Number(m[2]) - 1];
  if (!month) return time;
  return `${Number(m[3])} ${month} ${m[1]} ${m[4]}:${m[5]} UTC`;
}

export function sentence(record) {
  const earlier = record.also_sent_to.length ? `, after an earlier attempt sent it to ${record.also_sent_to.join(" and ")}` : "";
  return `Stored in data centre ${record.datacenter ?? "?"} (jurisdiction ${record.jurisdiction ?? "?"}) on ${plainTime(record.time)}${earlier}`;
}

// --- Merkle proofs (RFC 9162) -----------------------------------------------

async function leafHash(data) {
  return sha256(concat([0], data));
}

async function nodeHash(left, right) {
  return sha256(concat([1], left, right));
}

function bitLength(n) {
  return n === 0n ? 0 : n.toString(2).length;
}

function popCount(n) {
  return n.toString(2).split("").filter((c) => c === "1").length;
}

function decompose(index, size) {
  const inner = bitLength(index ^ (size - 1n));
  const border = popCount(index >> BigInt(inner));
  return [inner, border];
}

async function chainInner(seed, proof, index) {
  for (const [i, sibling] of proof.entries()) {
    seed = ((index >> BigInt(i)) & 1n) === 0n ? await nodeHash(seed, sibling) : await nodeHash(sibling, seed);
  }
  return seed;
}

async function chainInnerRight(seed, proof, index) {
  for (const [i, sibling] of proof.entries()) {
    if (((index >> BigInt(i)) & 1n) === 1n) seed = await nodeHash(sibling, seed);
  }
  return seed;
}

async function chainBorderRight(seed, proof) {
  for (const sibling of proof) seed = await nodeHash(sibling, seed);
  return seed;
}

function short(hash) {
  return hex(hash.slice(0, 8));
}

function checkLength(proof, want) {
  if (proof.length !== want) throw new Error(`proof has ${proof.length} hashes, expected ${want}`);
}

function checkRoot(size, computed, expected) {
  if (!equal(computed, expected)) {
    throw new Error(`computed root ${hex(computed.slice(0, 4))}… for tree size ${size} does not match the expected root ${hex(expected.slice(0, 4))}…`);
  }
}

async function verifyInclusion(leaf, index, size, proof, root) {
  if (index >= size) throw new Error(`index ${index} is not below tree size ${size}`);
  const [inner, border] = decompose(index, size);
  checkLength(proof, inner + border);
  const computed = await chainInner(leaf, proof.slice(0, inner), index);
  checkRoot(size, await chainBorderRight(computed, proof.slice(inner)), root);
}

// The root of the empty tree: SHA-256 of nothing.
async function emptyRoot() {
  return sha256(new Uint8Array(0));
}

async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
  if (oldSize > newSize) throw new Error(`old tree size ${oldSize} is larger than new tree size ${newSize}`);
  if (oldSize === newSize) {
    checkLength(proof, 0);
    checkRoot(newSize, newRoot, oldRoot);
    return;
  }
  if (oldSize === 0n) {
    checkLength(proof, 0);
    checkRoot(0n, await emptyRoot(), oldRoot);
    return;
  }
  let [inner, border] = decompose(oldSize - 1n, newSize);
  const shift = bitLength(oldSize & -oldSize) - 1;
  inner -= shift;
  const seeded = (oldSize & (oldSize - 1n)) !== 0n;
  checkLength(proof, (seeded ? 1 : 0) + inner + border);
  const seed = seeded ? proof[0] : oldRoot;
  const rest = seeded ? proof.slice(1) : proof;
  const mask = (oldSize - 1n) >> BigInt(shift);
  const innerPath = rest.slice(0, inner);
  const borderPath = rest.slice(inner);
  checkRoot(oldSize, await chainBorderRight(await chainInnerRight(seed, innerPath, mask), borderPath), oldRoot);
  checkRoot(newSize, await chainBorderRight(await chainInner(seed, innerPath, mask), borderPath), newRoot);
}

function hashes(list, step) {
  return list.map((h) => unhex32(h) ?? fail(step, `\`${h}\` is not a SHA-256 hash`));
}

// --- the verdict -------------------------------------------------------------

// inputs: { key, receipt?, checkpoint?, inclusion?, previous?, consistency?,
//           witnesses?, quorum?, file?: { sha256, bytes } }
// Returns { valid: true, notChecked: false, checks, sentence, checkpoint,
// record } or { valid: false, notChecked, step, message, checks }: with
// notChecked, NOT CHECKED (nothing was found wrong), else INVALID.
export async function check(inputs) {
  const checks = [];
  try {
    return { valid: true, notChecked: false, checks, ...(await run(inputs, checks)) };
  } catch (e) {
    if (e instanceof Failure) {
      return { valid: false, notChecked: NOT_CHECKED.includes(e.step), step: e.step, message: e.message, checks };
    }
    throw e;
  }
}

async function run(inputs, checks) {
  let key;
  try {
    key = await parseVkey(inputs.key ?? "", ALG_ED25519);
  } catch (e) {
    fail("key", `the key: ${e.message}`);
  }

  let receipt = null, record = null;
  if (inputs.receipt != null) {
    try {
      receipt = parseReceipt(inputs.receipt);
    } catch (e) {
      fail("receipt", e.message);
    }
    record = await checkReceipt(receipt, key, inputs.request_id ?? null, checks);
  }

  if (inputs.checkpoint == null) {
    if (receipt && receipt.signature) {
      checkFile(inputs, record, checks);
      return { sentence: sentence(record), record, checkpoint: null };
    }
    if (receipt) fail("inclusion", "the receipt carries no signature (receipts = \"log\"): give --log, or --checkpoint and --proof, to prove its inclusion");
    fail("receipt", "nothing to verify: give --receipt, --log or --checkpoint");
  }
  let checkpoint;
  try {
    checkpoint = await openCheckpoint(inputs.checkpoint, key);
  } catch (e) {
    fail("checkpoint", e.message);
  }
  checks.push(`checkpoint signed by ${key.name}: tree size ${checkpoint.size}, root ${short(checkpoint.root)}`);
  const witnessCheck = await checkWitnesses(inputs, inputs.checkpoint, key);
  if (witnessCheck) checks.push(witnessCheck);

  // A checkpoint that does not cover the receipt's index cannot hold its
  // inclusion: NOT CHECKED, but only once the history below, which needs
  // no inclusion, found nothing wrong — a log that rolled its tree back
  // below the receipt, or forked, is INVALID, not "not checked". As the
  // Rust verdict.
  let uncovered = null;
  if (receipt && receipt.index >= checkpoint.size) {
    uncovered = new Failure("coverage", `the checkpoint (tree size ${checkpoint.size}) does not cover the receipt's index ${receipt.index} yet: retry after the log's next checkpoint; if none covers it after the log's checkpoint interval, the log has not included the record`);
  } else if (receipt) {
    if (inputs.inclusion == null) fail("inclusion", "no inclusion proof: give --proof or --log");
    const path = hashes(inputs.inclusion, "inclusion");
    const leaf = await leafHash(receipt.record);
    try {
      await verifyInclusion(leaf, receipt.index, checkpoint.size, path, checkpoint.root);
    } catch (e) {
      fail("inclusion", `the record is not in the log: ${e.message}`);
    }
    checks.push(`record ${short(leaf)} is leaf ${receipt.index} of the checkpointed tree (inclusion proof, ${path.length} hashes)`);
  }

  if (inputs.previous != null) {
    let old;
    try {
      old = await openCheckpoint(inputs.previous, key);
    } catch (e) {
      fail("previous_checkpoint", `the previous checkpoint: ${e.message}`);
    }
    await checkConsistency(old, checkpoint, inputs.consistency);
    checks.push(`the log grew from ${old.size} to ${checkpoint.size} without rewriting history (consistency proof)`);
  }
  // The history passed (or was not given). A signed receipt's file is
  // judged now (its record is the log's word without the tree); one looked
  // up by request id waits for a checkpoint that covers it. As the Rust
  // verdict.
  if (uncovered) {
    if (record && receipt.signature != null) checkFile(inputs, record, checks);
    throw uncovered;
  }
  if (record) checkFile(inputs, record, checks);
  return { sentence: record ? sentence(record) : null, record, checkpoint };
}

async function checkReceipt(receipt, key, requestId, checks) {
  if (receipt.log !== key.name) {
    fail("receipt", `the receipt is from log \`${receipt.log}\`, the key is for \`${key.name}\``);
  }
  let record;
  try {
    record = parseRecord(receipt.record);
  } catch (e) {
    fail("receipt", e.message);
  }
  if (requestId != null && requestId !== record.request_id) {
    fail("receipt", `the log answered request id \`${requestId}\` with the record of request \`${record.request_id}\``);
  }
  if (receipt.signature) {
    const leaf = await leafHash(receipt.record);
    if (!(await ed25519Verify(key.publicKey, signedMessage(receipt.log, receipt.index, leaf), receipt.signature))) {
      fail("receipt_signature", `the receipt's signature does not verify with key ${key.name} (altered receipt, or another log's key)`);
    }
    checks.push(`receipt signature by ${key.name} over leaf ${receipt.index}`);
  }
  if (record.outcome !== "stored") {
    fail("outcome", `the record says the upload was ${record.outcome}${record.reason ? ` (${record.reason})` : ""}, not stored`);
  }
  return record;
}

async function checkWitnesses(inputs, note, logKey) {
  const given = inputs.witnesses ?? [];
  if (given.length === 0) return null;
  const keys = [];
  for (const text of given) {
    try {
      keys.push(await parseVkey(text, ALG_COSIGNATURE));
    } catch (e) {
      fail("witnesses", `witness key ${text}: ${e.message}`);
    }
  }
  // One public key under two names would count twice (a cosignature does
  // not name its witness), and a quorum no set of keys meets is refused:
  // as `CosignatureVerifier::check_distinct` and the Rust verdict do.
  for (const [i, a] of keys.entries()) {
    const b = keys.slice(0, i).find((k) => equal(k.publicKey, a.publicKey));
    if (b) {
      fail("witnesses", b.vkey === a.vkey
        ? `witness key ${label(a)} is given twice`
        : `witness keys ${label(b)} and ${label(a)} have the same public key: one witness cannot count twice towards a quorum`);
    }
    if (equal(a.publicKey, logKey.publicKey)) {
      fail("witnesses", `witness key ${label(a)} is the log's own public key: its cosignature would be the log vouching for itself`);
    }
    const twin = keys.slice(0, i).find((k) => k.name === a.name && equal(k.keyId, a.keyId));
    if (twin) {
      fail("witnesses", `witness keys ${label(twin)} and ${label(a)} share a name and key ID: their cosignatures cannot be told apart`);
    }
  }
  const quorum = inputs.quorum ?? keys.length;
  if (!(quorum >= 1 && quorum <= keys.length)) {
    fail("witnesses", `a quorum of ${quorum} cannot be met by ${keys.length} witness keys: it must be 1 to ${keys.length}`);
  }
  const valid = [];
  const others = [];
  let lines;
  try {
    lines = await cosignatures(note, keys);
  } catch (e) {
    fail("witnesses", e.message);
  }
  for (const key of keys) {
    const mine = lines.filter((c) => c.name === key.name && c.keyId === hex(key.keyId));
    if (mine.length === 0) others.push(`no cosignature by ${label(key)}`);
    else if (mine.some((c) => !c.verified)) others.push(`cosignature by ${label(key)} does not verify`);
    else valid.push(`${key.name} (at ${mine.map((c) => c.timestamp).reduce((a, b) => (a > b ? a : b))})`);
  }
  if (valid.length < quorum) {
    const found = valid.length ? `: from ${valid.join(", ")}` : "";
    fail("witnesses", `the checkpoint carries ${valid.length} valid cosignature(s) of the ${quorum} required from the ${keys.length} given witnesses${found}; ${others.join("; ")}`);
  }
  return `cosigned by ${valid.length} of ${keys.length} witnesses (quorum ${quorum}): ${valid.join(", ")}`;
}

async function checkConsistency(old, current, proof) {
  if (old.size > current.size) {
    fail("consistency", `the log shrank: the previous checkpoint has ${old.size} records, the current one ${current.size}`);
  }
  if (old.size === 0n && !equal(old.root, await emptyRoot())) {
    fail("consistency", `the previous checkpoint has 0 records but the root ${short(old.root)}, not the empty tree's`);
  }
  if (old.size === current.size) {
    if (!equal(old.root, current.root)) {
      fail("consistency", `two checkpoints of size ${old.size} with different roots (${short(old.root)} and ${short(current.root)}): the log forked`);
    }
    return;
  }
  if (old.size === 0n) return;
  if (proof == null) fail("consistency", "no consistency proof: give --consistency-proof or --log");
  const path = hashes(proof, "consistency");
  try {
    await verifyConsistency(old.size, current.size, old.root, current.root, path);
  } catch (e) {
    fail("consistency", `the log rewrote history: ${e.message}`);
  }
}

// "1 byte", "2 bytes".
export function byteCount(n) {
  return `${n} byte${String(n) === "1" ? "" : "s"}`;
}

function checkFile(inputs, record, checks) {
  const file = inputs.file;
  if (!file) return;
  if (!record.body) fail("file", "the record holds no digest of the upload");
  if (BigInt(file.bytes) !== BigInt(record.body.bytes)) {
    fail("file", `your file is ${byteCount(file.bytes)}; the upload the record describes was ${byteCount(record.body.bytes)}`);
  }
  if (file.sha256.toLowerCase() !== record.body.sha256.toLowerCase()) {
    fail("file", `your file's SHA-256 is ${file.sha256}; the upload the record describes has ${record.body.sha256}`);
  }
  checks.push(`your file is the upload the record describes (${byteCount(file.bytes)}, SHA-256 ${file.sha256.slice(0, 16)})`);
}
