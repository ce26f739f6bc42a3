#!/usr/bin/env python3
"""Uses the log's web page (`GET /` on `transparency.address`) in a real
headless Chromium (selenium and Debian's chromium-driver), as a customer
would, and prints what it saw as JSON. Driven by tests/it/page.rs.

    python3 tests/clients/page_check.py SCENARIO.json

The scenario names a `phase`:

- `first`: the key pinned in the link; a receipt pasted and verified with
  the keyboard alone; the same with the customer's file and with a wrong
  file; a request id; a tampered receipt; every shared vector run through
  the page's own verify.js; the page at 360 px; a link pinning another key.
- `witnessed`: the key and a witness pinned in the link (then another
  witness's key): the cosignatures shown and the verdict on a receipt.
- `generations`: a log that rolled to a new origin: the sealed generation's
  key pinned (a receipt and a request id of it), then the current one's.
- `generations_unavailable`: the sealed generation's key pinned while the
  log's `/generations` fails: the log panel and a receipt's verdict.
- `log_down`: `key` pinned while the log's API fails: the log panel, and
  the verdict on each of `texts` in turn.
- `checks`: each of `checks` (a `pin` and `texts`): the page with that key
  pinned, what its key line says and the verdict on each text in turn; then
  each of `key_checks` (`key`, `listed`, `origin`) through verify.js's own
  `generationKey`: the listed key it takes, or why not.
- `visit`: the key pinned as the link spells it: the history line (and,
  given a `receipt`, the verdict on it, then the history line again).
- `log_section`: the key pinned: what the log section says.
- `second`: a later visit with the same browser profile, after the log was
  restarted with another history: what the page says about it, and the
  verdict on a receipt from the new log.

Both report the console messages and every request the browser made.
Screenshots go to `shots` (a directory).
"""

import json
import sys
import time
from pathlib import Path
from urllib.parse import quote

import chromium
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

PENDING = ("Checking", "Waiting", "Hashing", "Looking")


def pinned(base: str, key: str) -> str:
    return f"{base}#key={quote(key, safe='')}"


def wait_for(driver, what, predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"waited {seconds} s for {what}")


def loaded(driver):
    wait_for(
        driver,
        "the log section",
        lambda: driver.find_element(By.ID, "log-checkpoint").text not in ("", "loading…")
        and driver.find_element(By.ID, "log-witnesses").text not in ("", "loading…"),
    )


def verdict(driver):
    """Waits for the verdict; returns its text, step and class."""
    box = driver.find_element(By.ID, "verdict")
    wait_for(driver, "a verdict", lambda: box.text and not box.text.startswith(PENDING))
    return {
        "text": box.text,
        "step": box.get_attribute("data-step"),
        "class": box.get_attribute("class"),
        "details": driver.find_element(By.ID, "details").text,
    }


def forget_verdict(driver):
    driver.execute_script(
        "const v = document.getElementById('verdict'); v.removeAttribute('data-step'); v.textContent = ''"
    )


def submit(driver, text, file=None):
    """Pastes `text` (and picks `file`) and presses Verify."""
    box = driver.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    picker = driver.find_element(By.ID, "file")
    driver.execute_script("arguments[0].value = ''", picker)
    if file:
        picker.send_keys(file)
    forget_verdict(driver)
    driver.find_element(By.ID, "verify").click()
    return verdict(driver)


def by_keyboard(driver, receipt):
    """From the top of the page: Tab to the box, type, Tab to the button, Enter."""
    driver.find_element(By.TAG_NAME, "body").click()
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    active = lambda: driver.execute_script("return document.activeElement && document.activeElement.id")
    path = []
    press = lambda keys: ActionChains(driver).send_keys(keys).perform()
    for _ in range(15):
        press(Keys.TAB)
        path.append(active())
        if path[-1] == "input":
            break
    else:
        return {"reached": path}
    press(receipt)
    for _ in range(5):
        press(Keys.TAB)
        path.append(active())
        if path[-1] == "verify":
            break
    forget_verdict(driver)
    press(Keys.ENTER)
    seen = verdict(driver)
    seen["reached"] = path
    seen["focus_after"] = active()
    return seen


def vectors(driver, path):
    """Runs every shared vector through the page's own verify.js."""
    results = {}
    for v in json.loads(Path(path).read_text())["vectors"]:
        got = driver.execute_async_script(
            """
            const [inputs, done] = arguments;
            import("./verify.js")
              .then((m) => m.check(inputs))
              .then((r) => done({ valid: r.valid, not_checked: r.notChecked ?? null, step: r.step ?? null, sentence: r.sentence ?? null, message: r.message ?? null }))
              .catch((e) => done({ error: String(e) }));
            """,
            v["inputs"],
        )
        results[v["name"]] = got
    return results


def full_shot(driver, path, width):
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 120, 6000))
    driver.save_screenshot(str(path))


def first(s, driver, out):
    shots = Path(s["shots"])
    driver.get(pinned(s["base"], s["key"]))
    loaded(driver)
    out["log"] = {
        "name": driver.find_element(By.ID, "log-name").text,
        "key": driver.find_element(By.ID, "log-key").text,
        "key_source": driver.find_element(By.ID, "key-source").text,
        "checkpoint": driver.find_element(By.ID, "log-checkpoint").text,
        "history": driver.find_element(By.ID, "history").text,
    }
    out["keyboard"] = by_keyboard(driver, s["receipt"])
    full_shot(driver, shots / "page-verified.png", 1100)
    out["with_file"] = submit(driver, s["receipt"], s["file"])
    out["wrong_file"] = submit(driver, s["receipt"], s["wrong_file"])
    out["request_id"] = submit(driver, s["request_id"])
    out["unknown_request_id"] = submit(driver, "0" * 32)
    # Dot segments a URL would resolve away (to the log's base).
    out["dot_request_ids"] = [submit(driver, dots) for dots in (".", "..")]
    out["tampered"] = submit(driver, s["tampered_receipt"])
    full_shot(driver, shots / "page-tampered.png", 1100)
    out["vectors"] = vectors(driver, s["vectors"])
    submit(driver, s["receipt"])
    driver.set_window_size(360, 800)
    time.sleep(0.3)
    out["overflow_360"] = driver.execute_script(
        "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
    out["wider_than_360"] = driver.execute_script(
        """const w = document.documentElement.clientWidth;
        return [...document.querySelectorAll('body *')]
          .filter((e) => e.getBoundingClientRect().right > w + 0.5)
          .map((e) => e.tagName + (e.id ? '#' + e.id : ''));"""
    )
    full_shot(driver, shots / "page-360px.png", 360)
    driver.set_window_size(1100, 1400)
    # The skip link changes only the fragment (to #check): the pins stay.
    driver.execute_script("document.querySelector('a.skip').click()")
    time.sleep(0.5)
    out["after_skip"] = {
        "hash": driver.execute_script("return location.hash"),
        "key": driver.find_element(By.ID, "log-key").text,
        "key_source": driver.find_element(By.ID, "key-source").text,
    }
    # Another key pasted into this tab (only the fragment differs): the
    # page loads again with it.
    driver.execute_script(
        "location.hash = 'key=' + encodeURIComponent(arguments[0]);", s["other_key"]
    )
    out["hash_changed_key"] = wait_for(
        driver,
        "the page loaded again with the other key",
        lambda: driver.find_element(By.ID, "log-key").text == s["other_key"]
        and driver.find_element(By.ID, "log-key").text,
    )
    # A link pinning another key: nothing the server says verifies.
    driver.get(pinned(s["base"], s["other_key"]))
    driver.refresh()
    loaded(driver)
    out["other_key"] = {
        "key_source": driver.find_element(By.ID, "key-source").text,
        "checkpoint": driver.find_element(By.ID, "log-checkpoint").text,
        "verdict": submit(driver, s["receipt"]),
    }


def witnessed(s, driver, out):
    """The key and a witness pinned in the link; then another witness."""
    shots = Path(s["shots"])
    for name, witness in (("pinned", s["witness"]), ("other", s["other_witness"])):
        driver.get(f"{pinned(s['base'], s['key'])}&witness={quote(witness, safe='')}")
        driver.refresh()
        loaded(driver)
        out[name] = {
            "witnesses": driver.find_element(By.ID, "log-witnesses").text,
            # What the page says of keeping this checkpoint as the
            # baseline (written after the witnesses' panel).
            "history": wait_for(
                driver,
                "the history line",
                lambda: driver.find_element(By.ID, "history").text,
            ),
            "verdict": submit(driver, s["receipt"]),
        }
        if name == "pinned":
            full_shot(driver, shots / "page-witnessed.png", 1100)


def second(s, driver, out):
    shots = Path(s["shots"])
    driver.get(pinned(s["base"], s["key"]))
    loaded(driver)
    history = driver.find_element(By.ID, "history")
    out["history"] = {"text": history.text, "class": history.get_attribute("class")}
    out["verdict"] = submit(driver, s["receipt"])
    full_shot(driver, shots / "page-history-rewritten.png", 1100)


def visit(s, driver, out):
    """The page opened with the key pinned as the link spells it: what it
    says about this browser's history with the log. (One load: a reload
    would find the checkpoint the first one kept.) With `fill_storage`, the
    origin's storage is filled first, until it takes nothing more."""
    if s.get("fill_storage"):
        # Another document of the origin (its storage), not the page.
        driver.get(s["base"] + "key")
        driver.execute_script(
            """let i = 0;
            for (let size = 1 << 20; size >= 1; size >>= 2) {
              const value = "x".repeat(size);
              try { for (;;) localStorage.setItem("fill/" + i++, value); } catch {}
            }"""
        )
    driver.get(pinned(s["base"], s["key"]))
    loaded(driver)
    history = wait_for(
        driver,
        "the history line",
        lambda: (lambda e: e if e.text else None)(driver.find_element(By.ID, "history")),
    )
    out["history"] = {"text": history.text, "class": history.get_attribute("class")}
    if "receipt" in s:
        out["verdict"] = submit(driver, s["receipt"])
        history = driver.find_element(By.ID, "history")
        out["history_after"] = {"text": history.text, "class": history.get_attribute("class")}


def log_section(s, driver, out):
    """The page opened with the key pinned: what its log section says."""
    driver.get(pinned(s["base"], s["key"]))
    out["checkpoint"] = wait_for(
        driver,
        "the log section",
        lambda: (lambda t: t if t not in ("", "loading…") else None)(
            driver.find_element(By.ID, "log-checkpoint").text
        ),
    )
    out["key_source"] = driver.find_element(By.ID, "key-source").text


def generations(s, driver, out):
    """A log that rolled: the sealed generation's key pinned, then the
    current one's."""
    for name, key, receipt, request_id in (
        ("sealed", s["sealed_key"], s["sealed_receipt"], s["sealed_request_id"]),
        ("current", s["key"], s["receipt"], None),
    ):
        driver.get(pinned(s["base"], key))
        driver.refresh()
        loaded(driver)
        seen = {
            "name": driver.find_element(By.ID, "log-name").text,
            "key_source": driver.find_element(By.ID, "key-source").text,
            "checkpoint": driver.find_element(By.ID, "log-checkpoint").text,
            "verdict": submit(driver, receipt),
        }
        if request_id:
            seen["request_id"] = submit(driver, request_id)
        out[name] = seen
    full_shot(driver, Path(s["shots"]) / "page-sealed-generation.png", 1100)


def log_panel(driver, base, key):
    """Opens the page with `key` pinned; returns what the log section says
    of the checkpoint once it says anything (it may be an error)."""
    driver.get(pinned(base, key))
    driver.refresh()
    return wait_for(
        driver,
        "the log section",
        lambda: (lambda t: t if t not in ("", "loading…") else None)(
            driver.find_element(By.ID, "log-checkpoint").text
        ),
    )


def generations_unavailable(s, driver, out):
    """The sealed generation's key pinned while the log cannot list its
    generations: what the log panel says, and the verdict on that
    generation's receipt."""
    out["checkpoint"] = log_panel(driver, s["base"], s["sealed_key"])
    out["verdict"] = submit(driver, s["sealed_receipt"])


def log_down(s, driver, out):
    """`key` pinned while the log cannot be read (or while its checkpoint
    does not cover a receipt yet): what the log panel says, and the
    verdict on each of `texts`."""
    out["checkpoint"] = log_panel(driver, s["base"], s["key"])
    out["verdicts"] = [submit(driver, text) for text in s["texts"]]


def checks(s, driver, out):
    """The page with each key pinned in turn, and a verdict on each text;
    then verify.js's generationKey on each of `key_checks`."""
    out["pins"] = []
    for item in s["checks"]:
        driver.get(pinned(s["base"], item["pin"]))
        driver.refresh()
        loaded(driver)
        out["pins"].append(
            {
                "key_source": driver.find_element(By.ID, "key-source").text,
                "verdicts": [submit(driver, text) for text in item["texts"]],
            }
        )
    full_shot(driver, Path(s["shots"]) / "page-other-generation.png", 1100)
    out["key_checks"] = [
        driver.execute_async_script(
            """
            const [c, done] = arguments;
            import("./verify.js")
              .then((m) => m.generationKey(c.key, c.listed, c.origin))
              .then((k) => done({ taken: k.canonical }))
              .catch((e) => done({ refused: String(e.message ?? e) }));
            """,
            c,
        )
        for c in s.get("key_checks", [])
    ]


def main() -> int:
    s = json.loads(Path(sys.argv[1]).read_text())
    driver = chromium.start(profile=s["profile"])
    out = {}
    try:
        # What the browser itself loads at start (its new-tab page) is not
        # the page's doing: start from a blank page with the logs drained.
        driver.get("about:blank")
        driver.get_log("performance")
        driver.get_log("browser")
        phases = {
            "first": first,
            "second": second,
            "witnessed": witnessed,
            "generations": generations,
            "generations_unavailable": generations_unavailable,
            "log_down": log_down,
            "checks": checks,
            "visit": visit,
            "log_section": log_section,
        }
        phases[s["phase"]](s, driver, out)
        out["console"] = chromium.console(driver)
        out["requests"] = chromium.requests(driver)
    finally:
        driver.quit()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
