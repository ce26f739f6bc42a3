"""A real headless Chromium for the tests (Debian's chromium and
chromium-driver, driven by selenium), and what it logged: shared by
report_check.py and page_check.py."""

import json

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def start(width=1100, height=1400, profile=None):
    """A headless Chromium with console and network logging; `profile` keeps
    its storage across runs (a second visit)."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if profile:
        options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def requests(driver):
    """Every request the browser sent since the last call: URL, method and
    whether it carried a body."""
    seen = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            request = message["params"]["request"]
            seen.append(
                {
                    "url": request["url"],
                    "method": request["method"],
                    "has_body": "postData" in request or request.get("hasPostData", False),
                }
            )
    return seen


def console(driver):
    """Console messages since the last call: level and text."""
    return [{"level": c["level"], "message": c["message"]} for c in driver.get_log("browser")]
