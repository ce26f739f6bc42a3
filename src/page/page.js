// The log's page: fetches what the verdict needs from this log (same
// origin only), runs the verdict in the browser (verify.js) and says what
// it found in plain words.

import { byteCount, check, cosignatures, generationKey, hex, openCheckpoint, parseReceipt, parseVkey, plainTime, sha256, unsupported, unsignedReceipt } from "./verify.js";

const STEP_NAMES = {
  key: "the log's key",
  receipt: "reading the receipt",
  receipt_signature: "the receipt's signature",
  outcome: "what the record says",
  checkpoint: "the log's signed checkpoint",
  witnesses: "the witnesses' cosignatures",
  coverage: "a checkpoint covering the record",
  inclusion: "the record's inclusion in the log",
  previous_checkpoint: "the checkpoint this browser saw before",
  consistency: "the log's history since this browser's last check",
  file: "your file",
};

// A step's name for a check of `inputs`: a request id's record is not a
// receipt the customer gave.
function stepName(step, inputs) {
  return step === "receipt" && inputs.request_id != null ? "the log's record of that request" : STEP_NAMES[step];
}

const $ = (id) => document.getElementById(id);
const fragment = new URLSearchParams(location.hash.slice(1));
// A key pasted into the address by hand has its '+' read as spaces.
const unspace = (vkey) => vkey.trim().replaceAll(" ", "+");
const pinnedKey = fragment.has("key") ? unspace(fragment.get("key")) : null;
const pinnedWitnesses = fragment.getAll("witness").map(unspace);
// The pins are read once: a link pasted into this tab that changes only
// the fragment to other pins (another key) loads the page again rather
// than going on with the key read before. A fragment without pins (the
// skip link's `#check`) changes nothing.
window.addEventListener("hashchange", () => {
  const now = new URLSearchParams(location.hash.slice(1));
  if (!now.has("key") && !now.has("witness")) return;
  const key = now.has("key") ? unspace(now.get("key")) : null;
  const witnesses = now.getAll("witness").map(unspace);
  if (key !== pinnedKey || witnesses.join(" ") !== pinnedWitnesses.join(" ")) location.reload();
});
let logKey = null; // the vkey in use
let logId = null; // the same key in its one spelling: what history is kept under
let logName = null; // its name: the origin of its generation of the log
// The last check's history: null when the log proved it grew from the
// checkpoint kept (or none was kept); else what could not be proven, and
// the checkpoint kept.
let historyUnproven = null;
// Where the pinned key's log is served: "" for the current generation,
// "generations/<n>/" for one the log rolled past (at its size limit).
let base = "";

// The most of one answer the page reads: a log's answers are a few KiB (a
// record at most 64 KiB, a note at most 1 MiB); a log that sends more is
// not read to its end (a hostile one could fill the tab's memory).
const MAX_ANSWER = 2 * 1024 * 1024;
// How long one answer may take, head and body (as `verify`'s fetcher): a
// log that trickles its answer must not hold a check for ever.
const ANSWER_TIMEOUT_MS = 10000;

// An answer's body, read up to MAX_ANSWER.
async function bounded(response, path) {
  const tooLarge = () => new Error(`${path}: the log's answer is larger than the ${MAX_ANSWER} bytes this page reads`);
  if (Number(response.headers.get("content-length")) > MAX_ANSWER) {
    await response.body?.cancel();
    throw tooLarge();
  }
  const chunks = [];
  let total = 0;
  if (response.body) {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > MAX_ANSWER) {
        await reader.cancel();
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  let text;
  try {
    // As `verify` reads answers: UTF-8, strictly, a BOM kept as text.
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new Error(`${path}: the log answered non-UTF-8 text`);
  }
  return { status: response.status, headers: response.headers, text: async () => text, json: async () => JSON.parse(text) };
}

// An error that says the log could not be read at the moment — not
// reached, timed out, an answer that broke off, a 5xx, 408 or 429 — as
// `verify` tells its NOT CHECKED from INVALID: nothing was found wrong.
function unavailable(message) {
  const error = new Error(message);
  error.unavailable = true;
  return error;
}

async function get(path) {
  let response;
  try {
    const signal = AbortSignal.timeout(ANSWER_TIMEOUT_MS);
    response = await bounded(await fetch(path, { cache: "no-store", credentials: "omit", signal }), path);
  } catch (e) {
    if (e?.name === "TimeoutError") throw unavailable(`${path}: the log did not answer within ${ANSWER_TIMEOUT_MS / 1000} s`);
    // fetch's own failure (not reached, broken off): a TypeError.
    if (e instanceof TypeError) throw unavailable(`${path}: ${e.message}`);
    throw e;
  }
  if (response.status < 200 || response.status > 299) {
    let why = `HTTP ${response.status}`;
    try {
      why = (await response.json()).error ?? why;
    } catch {
      // not JSON: the status says enough
    }
    const s = response.status;
    const error = s >= 500 || s === 408 || s === 429 ? unavailable(`${path}: ${why}`) : new Error(`${path}: ${why}`);
    error.status = s;
    throw error;
  }
  return response;
}

// Builds an element: el("p", {class: "x"}, "text", child, …).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function say(id, ...children) {
  $(id).replaceChildren(...children);
}

// --- what this browser saw before --------------------------------------

function storageKey(vkey) {
  return `residency-log/checkpoint/${vkey}`;
}

function remembered(vkey) {
  try {
    const saved = JSON.parse(localStorage.getItem(storageKey(vkey)));
    return saved && typeof saved.note === "string" ? saved : null;
  } catch {
    return null;
  }
}

// Keeps `note` as the checkpoint seen of `vkey`'s log; false if it is not
// kept. Nothing is ever removed to make room: what a hostile log could
// evict is a pinned key's history. Instead a log's notes (a few KiB) are
// kept only up to 16 KiB each, and keys the server presented without a pin
// only up to 64 of them, so that a log presenting a new key at every visit
// cannot fill this origin's storage and leave no room for a pinned key's.
const MAX_KEPT_NOTE = 16 * 1024;
const MAX_UNPINNED_KEYS = 64;
function remember(vkey, note) {
  if (note.length > MAX_KEPT_NOTE) return false;
  try {
    if (!pinnedKey && localStorage.getItem(storageKey(vkey)) === null) {
      let keys = 0;
      for (let i = 0; i < localStorage.length; i++) {
        if (localStorage.key(i)?.startsWith("residency-log/checkpoint/")) keys++;
      }
      if (keys >= MAX_UNPINNED_KEYS) return false;
    }
    localStorage.setItem(storageKey(vkey), JSON.stringify({ note, seen: new Date().toISOString() }));
    return true;
  } catch {
    return false; // storage full or disabled
  }
}

const NOT_KEPT = "This browser did not keep this checkpoint (its storage for this page is disabled or full, or holds the checkpoints of 64 keys seen without a pin), so the next visit cannot check that the log only grew from it.";

// The tree size a note claims (line 2), before any check.
function claimedSize(note) {
  const size = note.split("\n")[1];
  return /^[0-9]+$/.test(size ?? "") ? BigInt(size) : null;
}

// The inputs about history: the checkpoint seen before and the log's
// consistency proof from it to `note` (of the generation served at `at`).
async function history(vkey, note, at = base) {
  const before = remembered(vkey);
  if (!before) return { before: null, inputs: {} };
  const from = claimedSize(before.note);
  const to = claimedSize(note);
  let consistency = [];
  if (from !== null && to !== null && from > 0n && from < to) {
    try {
      consistency = (await (await get(`${at}proof/consistency?from=${from}&to=${to}`)).json()).hashes;
    } catch (e) {
      // A log that does not prove it only grew has not proven it.
      return { before, inputs: {}, unproven: e.message };
    }
  }
  return { before, inputs: { previous: before.note, consistency } };
}

// A verifier key as one spelling (its key id in lower case), or the text
// itself if it does not parse: two spellings of one key are one key.
async function canonical(vkey) {
  try {
    return (await parseVkey(vkey, 0x01)).canonical;
  } catch {
    return vkey;
  }
}

function seenOn(before) {
  const size = claimedSize(before.note);
  return `${plainTime(before.seen)} (${size ?? "?"} records)`;
}

// --- the log ------------------------------------------------------------

// The generation of this log that `vkey` is the key of, if the log rolled
// past it (a new origin at its size limit); null otherwise.
async function generationOf(vkey) {
  let response;
  try {
    response = await get("generations");
  } catch (e) {
    if (e.status === 404) return null; // no list: a log that never rolled
    throw e; // could not ask: not the same as "not a sealed generation"
  }
  const { generations } = await response.json();
  const wanted = await canonical(vkey);
  let found = null;
  for (const g of generations) {
    if (g.sealed && (await canonical(g.key)) === wanted) {
      found = g;
      break;
    }
  }
  // Only a prefix of the log's own form: anything else is not followed.
  if (found && !/^\/generations\/[0-9]+\/$/.test(found.prefix)) {
    throw new Error(`the log lists generation ${found.generation} under the prefix ${JSON.stringify(found.prefix)}, not /generations/<n>/`);
  }
  return found;
}

// Whether two verifier keys name different logs (false if either does
// not parse).
async function namedOtherwise(a, b) {
  try {
    return (await parseVkey(a, 0x01)).name !== (await parseVkey(b, 0x01)).name;
  } catch {
    return false;
  }
}

// --- the log's other generations ------------------------------------------

// The most of the log's other generations one check of a request id looks
// in, newest first (one lookup each): a log may list thousands.
const MAX_LOOKUPS = 64;

// The generation the key in use is of, as a check runs against it (its
// name as written when the key is not usable: the verdict says why).
function ownGeneration() {
  return { key: logKey, id: logId, base, name: logName ?? logKey.split("+")[0], elsewhere: false };
}

// A key spelled as `canonical` spells it (its key ID in lower case), not
// checked: it is only compared with the key in use, which was.
function spelled(vkey) {
  const parts = String(vkey).trim().split("+");
  if (parts.length > 1) parts[1] = parts[1].toLowerCase();
  return parts.join("+");
}

// The name the log gives generation `n` of the log whose first origin is
// `root`: `root` itself, then `<root>/<n>` after each roll.
function generationOrigin(root, n) {
  return n === 1 ? root : `${root}/${n}`;
}

// The key in use, as the page's text names it.
function keyInUse() {
  return pinnedKey ? "the pinned key" : "this server's key";
}

// The log's generations but the key in use's, newest first, from one
// `GET /generations` (none for a log without the list). `own`: the key in
// use's generation number and `root`: the log's first origin, known when
// the list names the key in use as a generation its name fits (its name
// is `root`, or `<root>/<own>`); else `unlisted` says why they are not.
async function otherGenerations() {
  let list;
  try {
    list = (await (await get("generations")).json()).generations;
  } catch (e) {
    if (e.status === 404) return { others: [] };
    throw e;
  }
  if (!Array.isArray(list)) throw new Error("generations: the log's list of generations is not a list");
  list = list.filter((g) => Number.isSafeInteger(g?.generation) && g.generation >= 1);
  const mine = list.find((g) => typeof g.key === "string" && spelled(g.key) === logId);
  const others = list.filter((g) => g !== mine).sort((a, b) => b.generation - a.generation);
  if (!mine) return { others, unlisted: `it does not list ${keyInUse()} among its generations` };
  const suffix = `/${mine.generation}`;
  if (mine.generation === 1) return { others, own: 1, root: logName };
  if (logName.endsWith(suffix) && logName.length > suffix.length) {
    return { others, own: mine.generation, root: logName.slice(0, -suffix.length) };
  }
  return { others, unlisted: `it lists ${keyInUse()} as its generation ${mine.generation}, whose origin would end in ${suffix}` };
}

// Listed generation `g`, as this page may check against it: `{ gen }`, or
// `{ refused }` saying why not. The list is not signed: a generation is
// taken only if its origin is the name the log gives that generation, it
// is served under /generations/<n>/, and its listed key is the key in
// use's public key under that name (its key ID recomputed).
async function judge(g, root) {
  const n = g.generation;
  const origin = generationOrigin(root, n);
  if (g.origin !== origin) {
    return { refused: `its origin is not the name this log gives generation ${n}, which is ${origin}` };
  }
  if (g.prefix !== `/generations/${n}/`) {
    return { refused: `it is listed under the prefix ${JSON.stringify(g.prefix)}, not /generations/${n}/` };
  }
  try {
    const key = await generationKey(logKey, g.key, origin);
    return { gen: { key: key.canonical, id: key.canonical, base: g.prefix.slice(1), name: key.name, number: n, elsewhere: true } };
  } catch (e) {
    return { refused: e.message };
  }
}

// The record of request id `id` in generation `gen`, or null.
async function recordIn(gen, id) {
  try {
    return await (await get(`${gen.base}records/${encodeURIComponent(id)}`)).json();
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

// Request id `id` in the log's other generations, newest first, at most
// MAX_LOOKUPS of them: `{ gen, entry, own }` from the first that holds it;
// else how many it looked in (`looked`), of how many (`others`), those it
// refused (`refused`: `{ n, why }`), whether it stopped at the limit, and
// why it looked in none (`unlisted`).
async function lookElsewhere(id) {
  const { own, root, others, unlisted } = await otherGenerations();
  if (unlisted) return { looked: 0, others: others.length, refused: [], unlisted };
  const refused = [];
  let looked = 0;
  for (const [i, g] of others.entries()) {
    if (i === MAX_LOOKUPS) return { looked, others: others.length, refused, capped: true };
    const { gen, refused: why } = await judge(g, root);
    if (!gen) {
      refused.push({ n: g.generation, why });
      continue;
    }
    say("verdict", `Looking in generation ${gen.number} of this log…`);
    looked++;
    const entry = await recordIn(gen, id);
    if (entry) return { gen, entry, own };
  }
  return { looked, others: others.length, refused, capped: false };
}

// The generation a receipt names by its origin (`log`), when it is not the
// key in use's: `{ gen, own }` to check it against; `{ refused, n }` when
// the log lists it with a key this page does not take; `{}` when the log
// does not list it.
async function generationNamed(log) {
  const { own, root, others, unlisted } = await otherGenerations();
  let first = {};
  // A log lists each origin once; a list that repeats one is judged no
  // further than the search's bound.
  for (const g of others.filter((g) => g.origin === log).slice(0, MAX_LOOKUPS)) {
    const judged = unlisted ? { refused: unlisted } : await judge(g, root);
    if (judged.gen) return { gen: judged.gen, own };
    if (!first.refused) first = { refused: judged.refused, n: g.generation };
  }
  return first;
}

// What a verdict on a record of another generation adds: where it is.
function elsewhereText(gen, own) {
  const whose = pinnedKey ? "whose key is pinned in this link" : "whose key this server presents";
  return `The record is in generation ${gen.number} of this log (origin ${gen.name}), not in generation ${own} (origin ${logName}), ${whose}: it was checked against generation ${gen.number}'s own checkpoint, which the same key signs under that origin's name.`;
}

// Why a request id was not found, after looking in the log's other
// generations (`search`; none when the log lists no other).
function notFoundText(id, search) {
  const tail = "A record is written when the upload is answered; check the id, or try its receipt.";
  if (!search || search.others === 0) return `this log has no record for request id ${id} (yet). ${tail}`;
  if (search.unlisted) {
    return `this log has no record for request id ${id} (yet) in ${keyInUse()}'s generation. This log lists ${search.others} other generation${search.others === 1 ? "" : "s"}, but ${search.unlisted}: this page looks in none of them. ${tail}`;
  }
  const parts = [search.looked > 0
    ? `this log has no record for request id ${id} (yet): not in ${keyInUse()}'s generation, nor in the ${search.looked} other generation${search.looked === 1 ? "" : "s"} this page looked in.`
    : `this log has no record for request id ${id} (yet) in ${keyInUse()}'s generation, and this page looked in none of its others.`];
  if (search.refused.length) {
    const shown = search.refused.slice(0, 3).map((r) => `generation ${r.n}, which this page does not look in: ${r.why}`);
    const more = search.refused.length - shown.length;
    parts.push(`The log lists ${shown.join("; and ")}${more ? `; and ${more} more such` : ""}. Its list of generations is not signed: this page looks only in those whose key is ${keyInUse()} under that generation's origin.`);
  }
  if (search.capped) {
    parts.push(`This page looks in at most ${MAX_LOOKUPS} other generations, newest first; this log lists ${search.others} others. (A receipt names its generation, and is checked there.)`);
  }
  parts.push(tail);
  return parts.join(" ");
}

async function showLog() {
  const served = (await (await get("key")).text()).trim();
  const wanted = pinnedKey ?? served;
  say("log-key", wanted);
  const pinLink = el("a", { href: `#key=${encodeURIComponent(served)}`, id: "pin-link" }, "this page with the key pinned");
  // Which generation a pinned key is of is known before any check runs: a
  // sealed one's records are checked under its prefix, never against the
  // current checkpoint. Until then `logKey` stays unset, so a check tries
  // again and says it could not check if the log still cannot tell.
  const same = (await canonical(wanted)) === (await canonical(served));
  let sealed = pinnedKey && !same ? await generationOf(wanted) : null;
  // The list is not signed: a sealed generation's key names another origin
  // than the one the log writes under now (it rolled to `<origin>/<n>`). A
  // key swapped under the same name is not explained away as a roll.
  if (sealed && !(await namedOtherwise(wanted, served))) sealed = null;
  logKey = wanted;
  if (sealed) {
    base = sealed.prefix.replace(/^\//, "");
    // Its size is not taken from the list, which is not signed: the
    // checkpoint below, checked with the pinned key, says it.
    say("key-source", "Pinned in this link: generation ", String(sealed.generation),
      " of this log, sealed (its last checkpoint is below). The log now writes under another origin, with the key ", el("code", {}, served), ".");
  } else if (pinnedKey && !same) {
    say("key-source", el("strong", { class: "warn-text" }, "Pinned in this link, and not the key this server presents now: "),
      el("code", {}, served), ". Every check below uses the pinned key.");
  } else if (pinnedKey) {
    say("key-source", "Pinned in this link: this page does not take the server's word for the key.");
  } else {
    say("key-source", "As this server presents it. To check against this key next time instead of the server's, bookmark ",
      pinLink, ", or compare it with the key your provider gave you.");
  }
  let key;
  try {
    key = await parseVkey(logKey, 0x01);
    logId = key.canonical;
    logName = key.name;
    say("log-name", key.name);
  } catch (e) {
    say("log-name", el("span", { class: "bad-text" }, `The key is not usable: ${e.message}`));
    return;
  }
  const response = await get(`${base}checkpoint`);
  const note = await response.text();
  const { before, inputs, unproven } = await history(logId, note);
  const verdict = await check({ key: logKey, checkpoint: note, ...inputs });
  if (!verdict.valid && (verdict.step === "key" || verdict.step === "checkpoint")) {
    say("log-checkpoint", el("span", { class: "bad-text" }, `Does not verify: ${verdict.message}`));
  } else {
    const size = claimedSize(note);
    const parts = [`${size} record${size === 1n ? "" : "s"}, signed by the log's key`];
    const covered = Number(response.headers.get("residency-checkpoint-covered-at"));
    if (covered > 0) {
      const age = Math.max(0, Math.round(Date.now() / 1000 - covered));
      parts.push(`; it covered every record ${age} s ago (by the log's clock)`);
    }
    say("log-checkpoint", parts.join(""));
  }
  await showWitnesses(note);
  if (unproven !== undefined) {
    $("history").className = "bad";
    say("history", el("strong", {}, "Could not check that this log only grew"),
      ` since this browser last saw it on ${seenOn(before)}: ${unproven}. This browser keeps the checkpoint it saw before.`);
  } else if (!verdict.valid && (verdict.step === "previous_checkpoint" || verdict.step === "consistency")) {
    $("history").className = "bad";
    say("history", el("strong", {}, "This log's history changed since this browser last saw it"),
      ` on ${seenOn(before)}: ${verdict.message}. A log may only grow; keep a copy of this page as evidence and tell the operator. This browser keeps the checkpoint it saw before.`);
  } else if (verdict.valid && !(await witnessed(note))) {
    // Kept only once the pinned witnesses vouch for it too, as a receipt's
    // check keeps one: a view they never saw would else become the
    // baseline every later honest checkpoint is held to.
    say("history", before
      ? `The log only grew since this browser last saw it on ${seenOn(before)}: consistency proven. ${UNWITNESSED}`
      : `This browser had not seen this log before. ${UNWITNESSED}`);
  } else if (verdict.valid && before) {
    $("history").className = "ok-text";
    const kept = remember(logId, note);
    say("history", `The log only grew since this browser last saw it on ${seenOn(before)}: consistency proven.${kept ? "" : ` ${NOT_KEPT}`}`);
  } else if (verdict.valid) {
    const kept = remember(logId, note);
    $("history").className = kept ? "" : "bad";
    say("history", kept
      ? "This browser had not seen this log before; it keeps this checkpoint, to check on the next visit that the log only grew."
      : `This browser had not seen this log before. ${NOT_KEPT}`);
  }
}

async function showWitnesses(note) {
  const keys = [];
  for (const w of pinnedWitnesses) {
    try {
      keys.push(await parseVkey(w, 0x04));
    } catch (e) {
      say("log-witnesses", el("span", { class: "bad-text" }, `A witness key in this link is not usable: ${e.message}`));
      return;
    }
  }
  let lines;
  try {
    lines = await cosignatures(note, keys);
  } catch {
    lines = [];
  }
  if (lines.length === 0) {
    say("log-witnesses", keys.length ? el("span", { class: "bad-text" }, "None, though this link names witnesses.") : "None on this checkpoint.");
    return;
  }
  const list = el("ul");
  for (const c of lines) {
    // A timestamp no date can show (a line by some unknown key may say
    // anything) must not break the panel.
    const secs = c.timestamp === null ? NaN : Number(c.timestamp);
    const when = secs >= 0 && secs <= 8.64e12 ? plainTime(new Date(secs * 1000).toISOString()) : "an unreadable time";
    const status = c.verified === true ? el("span", { class: "ok-text" }, "verified")
      : c.verified === false ? el("span", { class: "bad-text" }, "does not verify")
        : "not checked: pin this witness's key with &witness= in the link";
    list.append(el("li", {}, `${c.name} at ${when}: `, status));
  }
  say("log-witnesses", list);
}

// --- a check ----------------------------------------------------------------

const UNWITNESSED = "This checkpoint is not kept as the one to check the log's growth against: the witnesses pinned in this link have not all cosigned it (yet; reload in a few seconds). This browser keeps the checkpoint it saw before.";

// Whether the witnesses pinned in the link vouch for `note`, by the
// verdict's own rules (every pinned key, each cosignature verified); an
// unusable pinned key vouches for nothing.
async function witnessed(note) {
  if (pinnedWitnesses.length === 0) return true;
  return (await check({ key: logKey, checkpoint: note, witnesses: pinnedWitnesses })).valid;
}

// Whether `note` is a checkpoint signed with `vkey` (the log's key).
async function signed(note, vkey) {
  try {
    await openCheckpoint(note, await parseVkey(vkey, 0x01));
    return true;
  } catch {
    return false;
  }
}

// Whether every witness pinned in the link has validly cosigned `note`.
async function cosigned(note) {
  if (pinnedWitnesses.length === 0) return true;
  try {
    const keys = await Promise.all(pinnedWitnesses.map((w) => parseVkey(w, 0x04)));
    const lines = await cosignatures(note, keys);
    return keys.every((k) => lines.some((c) => c.verified && c.name === k.name && c.keyId === hex(k.keyId)));
  } catch {
    return true; // the verdict says what is wrong
  }
}

// What a check of `text` runs on: `inputs` for the verdict and `gen`, the
// generation of the log they are of. A record the key in use's generation
// does not hold is looked for in the log's other generations, and checked
// against the one that holds it (`own`: the key in use's generation
// number); `notFound` and `search` when none does; `refused` when a
// receipt names a generation the log lists with a key this page does not
// take.
async function inputsFor(text) {
  let gen = ownGeneration();
  let own = null;
  let refused = null;
  let receipt = text;
  let requestId = null;
  if (!/record=/.test(text) && /^[A-Za-z0-9._~-]{1,128}$/.test(text)) {
    // A request id: its record, proven by inclusion.
    // `.` and `..` would be dot segments of the URL, resolved away to
    // another address; no request id is one.
    if (text === "." || text === "..") return { notFound: text };
    let entry = await recordIn(gen, text);
    // An unusable key has no generations to look in.
    if (entry === null && logId === null) return { notFound: text };
    if (entry === null) {
      const search = await lookElsewhere(text);
      if (!search.gen) return { notFound: text, search };
      ({ gen, entry, own } = search);
    }
    receipt = unsignedReceipt(gen.name, entry.index, entry.record);
    requestId = text;
  } else {
    // A receipt names its log: another generation's origin is checked
    // against that generation.
    let log = null;
    try {
      log = parseReceipt(receipt).log;
    } catch {
      // the verdict says what is wrong with it
    }
    if (log !== null && log !== gen.name && logId !== null) {
      const named = await generationNamed(log);
      if (named.gen) ({ gen, own } = named);
      else if (named.refused) refused = { log, n: named.n, why: named.refused };
    }
  }
  const inputs = { key: gen.key, witnesses: pinnedWitnesses, receipt };
  if (requestId !== null) inputs.request_id = requestId;
  let index = null;
  try {
    index = parseReceipt(receipt).index;
  } catch {
    // the verdict says what is wrong with it
  }
  // The latest checkpoint, waiting (up to 10 s, as `verify` does) for one
  // that covers a fresh receipt and carries the pinned witnesses'
  // cosignatures, which arrive after the log signs.
  let note;
  let good = true;
  for (let waited = 0; ; waited += 500) {
    note = await (await get(`${gen.base}checkpoint`)).text();
    // One that does not verify is judged at once, as by `verify`: a log
    // that served it has misbehaved, even if a good one came next.
    good = await signed(note, gen.key);
    if (!good) break;
    const size = claimedSize(note);
    const covered = index === null || size === null || index < size;
    if ((covered && (await cosigned(note))) || waited >= 10000) break;
    say("verdict", covered ? "Waiting for the witnesses' cosignatures…" : `Waiting for the log's next checkpoint to cover record ${index}…`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  inputs.checkpoint = note;
  // Nothing more is asked of the log for a checkpoint that does not
  // verify: the verdict says so (proofs for its claimed size would fail
  // first, with another reason: verification, stop 64).
  historyUnproven = null;
  if (good) {
    const size = claimedSize(note);
    if (index !== null && size !== null && index < size) {
      inputs.inclusion = (await (await get(`${gen.base}proof/inclusion?index=${index}&size=${size}`)).json()).hashes;
    }
    const { before, inputs: seen, unproven } = await history(gen.id, note, gen.base);
    Object.assign(inputs, seen);
    // Kept only when the log proved it grew from the one kept before.
    historyUnproven = unproven === undefined ? null : { before, why: unproven };
  }
  const file = $("file").files[0];
  if (file) {
    say("verdict", `Hashing ${file.name} in this browser…`);
    inputs.file = { sha256: hex(await sha256(await file.arrayBuffer())), bytes: file.size };
  }
  return { inputs, gen, own, refused };
}

// A check of what needs no log, as `verify` makes when the log cannot be
// read: a signed receipt of the key's own log (the key pinned in the link,
// or the one read from the log before), by its signature and its record,
// and the file given. The verdict and its inputs; null when there is
// nothing to judge so (a request id, an unsigned receipt, another log's).
async function withoutLog(text) {
  const vkey = logKey ?? pinnedKey;
  if (vkey === null || !/record=/.test(text)) return null;
  let key;
  try {
    key = await parseVkey(vkey, 0x01);
  } catch {
    return null;
  }
  let receipt = null;
  try {
    receipt = parseReceipt(text);
  } catch {
    // judged: the verdict says what is wrong with it
  }
  if (receipt !== null && (receipt.log !== key.name || !receipt.signature)) return null;
  const inputs = { key: vkey, receipt: text };
  const file = $("file").files[0];
  if (file) inputs.file = { sha256: hex(await sha256(await file.arrayBuffer())), bytes: file.size };
  return { verdict: await check(inputs), inputs };
}

function details(verdict, inputs) {
  const out = [];
  if (verdict.record) {
    const r = verdict.record;
    const body = r.body ? `${byteCount(r.body.bytes)}, SHA-256 ${r.body.sha256}` : "no body digest";
    out.push(el("p", {}, `Upload ${r.request_id} (${body}) from ${r.country ?? "an unknown country"} (${r.client?.address ?? "address not recorded"}), answered HTTP ${r.upstream_status ?? "?"} by the data centre.`));
    if (r.also_sent_to.length) {
      out.push(el("p", {}, `An earlier attempt sent it to ${r.also_sent_to.join(" and ")} (the data centre failed or did not answer in time, and the upload was replayed): ${r.also_sent_to.length > 1 ? "they" : "it"} may hold a copy too.`));
    }
    if (r.tenant) {
      out.push(el("p", {}, `For tenant ${r.tenant.name} (recognised by ${r.tenant.source.replace("_", " ")}), whose data is pinned to jurisdiction ${r.jurisdiction}; GeoIP placed the client in ${r.tenant.origin_jurisdiction ?? "no jurisdiction"}.`));
    }
  }
  if (inputs.file && verdict.valid) {
    out.push(el("p", { class: "ok-text" }, `Your file ${$("file").files[0]?.name ?? ""} is the upload the record describes (same SHA-256 and length).`));
  }
  if (verdict.checks.length) {
    // A record not covered yet is judged on the log's history after the
    // coverage step (which found nothing wrong): those checks passed, not
    // "before that".
    out.push(el("p", {}, verdict.valid || verdict.notChecked ? "Checks passed:" : "Checks passed before that:"));
    out.push(el("ol", { id: "checks" }, ...verdict.checks.map((c) => el("li", {}, c))));
  }
  return out;
}

async function onSubmit(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  const box = $("verdict");
  box.className = "";
  say("details");
  if (!text) {
    say("verdict", "Paste a receipt or a request id first.");
    $("input").focus();
    return;
  }
  $("verify").disabled = true;
  say("verdict", "Checking…");
  try {
    if (!logKey) await showLog();
    const { inputs, gen, own, refused, notFound, search } = await inputsFor(text);
    if (notFound) {
      box.className = "bad";
      say("verdict", el("strong", {}, "Not found: "), notFoundText(notFound, search));
      return;
    }
    const verdict = await check(inputs);
    // Which generation of the log the record was checked in, when it is
    // not the key in use's; or why a generation a receipt names was not.
    const where = gen.elsewhere ? [" ", elsewhereText(gen, own)]
      : refused && !verdict.valid ? [` The log lists ${refused.log} as its generation ${refused.n}, but ${refused.why}: this page does not take that generation's key from the log's list of generations, which is not signed.`]
        : [];
    if ((verdict.valid || verdict.notChecked) && historyUnproven) {
      // Proven (or not covered yet) against a checkpoint that the log would
      // not prove extends the one this browser saw: perhaps another history
      // (a fork), as `verify --previous` refuses it. Not covered yet,
      // "nothing was found wrong" would hide that (verification, stop 70).
      const { before, why } = historyUnproven;
      box.className = "bad";
      box.dataset.step = "consistency";
      const unproven = `the log did not prove that it only grew since this browser last saw it on ${seenOn(before)} (${why})`;
      say("verdict", el("strong", {}, "Not verified: "), verdict.valid
        ? `the record ("${verdict.sentence}") is in the log's latest checkpoint, but ${unproven}, so that checkpoint may be of another history. Try again later.`
        : `${verdict.message}; and ${unproven}, so its checkpoint may be of another history. Try again later.`, ...where);
      // The line about history is the key in use's generation's.
      if (!gen.elsewhere) {
        $("history").className = "bad";
        say("history", el("strong", {}, "Could not check that this log only grew"),
          ` since this browser last saw it on ${seenOn(before)}: ${why}. This browser keeps the checkpoint it saw before.`);
      }
    } else if (verdict.valid) {
      box.className = "ok";
      say("verdict", el("strong", {}, `${verdict.sentence} — verified`), ...(where.length ? [".", ...where] : []));
      remember(gen.id, inputs.checkpoint);
    } else if (verdict.notChecked) {
      // Nothing was found wrong (a checkpoint that does not cover the
      // record yet): as `verify`'s NOT CHECKED, not "Not verified".
      box.className = "bad";
      box.dataset.step = verdict.step;
      say("verdict", el("strong", {}, "Could not check: "), `${verdict.message} (nothing was found wrong)`, ...(where.length ? [".", ...where] : []));
    } else {
      box.className = "bad";
      box.dataset.step = verdict.step;
      say("verdict", el("strong", {}, `Not verified: ${stepName(verdict.step, inputs)} failed.`), ` ${verdict.message}`, ...(where.length ? [".", ...where] : []));
    }
    say("details", ...details(verdict, inputs));
  } catch (e) {
    box.className = "bad";
    // A log that answered, but not as a log does (a 404 for its
    // checkpoint, an answer that does not parse): as `verify`'s INVALID.
    if (!e?.unavailable) {
      say("verdict", el("strong", {}, "Not verified: "), `the log's answer: ${e.message}`);
      return;
    }
    // What needs no log is judged all the same, as `verify` does: the
    // log's failure must not turn a forged receipt into "could not check".
    const offline = await withoutLog(text).catch(() => null);
    if (offline && !offline.verdict.valid) {
      const { verdict, inputs } = offline;
      box.dataset.step = verdict.step;
      say("verdict", el("strong", {}, `Not verified: ${stepName(verdict.step, inputs)} failed.`), ` ${verdict.message}`);
      say("details", ...details(verdict, inputs));
    } else {
      say("verdict", el("strong", {}, "Could not check: "), `${e.message} (nothing was found wrong)`);
    }
  } finally {
    $("verify").disabled = false;
    box.focus();
  }
}

async function start() {
  const why = await unsupported();
  if (why) {
    $("history").className = "bad";
    say("history", el("strong", {}, "Cannot check here: "), why);
    $("verify").disabled = true;
    return;
  }
  $("form").addEventListener("submit", onSubmit);
  await showLog();
}

start().catch((e) => say("log-checkpoint", el("span", { class: "bad-text" }, `Could not read the log: ${e.message}`)));
if (fragment.get("id")) {
  $("input").value = fragment.get("id");
}
