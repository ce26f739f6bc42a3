#!/usr/bin/env python3
"""Opens an HTML drill report in a real headless Chromium (selenium and
Debian's chromium-driver) and prints what a reviewer would see, as JSON:

    python3 tests/clients/report_check.py REPORT.html SCREENSHOT.png

{"console_errors": [...], "requests": [...], "jurisdiction_charts": [...],
 "latency_charts": N, "fault_rows": N, "verdict": "...", "width_overflow": bool}

`requests` lists every URL the page asked for besides itself (a
self-contained report asks for none). The screenshot is the full page at
1100 px wide.
"""

import json
import sys
from pathlib import Path

import chromium
from selenium.webdriver.common.by import By


def main() -> int:
    report, screenshot = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    driver = chromium.start()
    try:
        url = report.as_uri()
        driver.get(url)
        console = chromium.console(driver)
        requests = [r["url"] for r in chromium.requests(driver) if r["url"] != url]
        charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart.jurisdiction")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1100, min(int(height) + 100, 8000))
        driver.save_screenshot(str(screenshot))
        summary = {
            "console_errors": [c["message"] for c in console if c["level"] in ("SEVERE", "ERROR", "WARNING")],
            "requests": requests,
            "jurisdiction_charts": [c.get_attribute("data-jurisdiction") for c in charts],
            "latency_charts": len(driver.find_elements(By.CSS_SELECTOR, "figure.chart.latency svg path")),
            "fault_rows": len(driver.find_elements(By.CSS_SELECTOR, "table#faults tbody tr")),
            "verdict": driver.find_element(By.ID, "verdict").text,
            "width_overflow": driver.execute_script(
                "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
            ),
        }
    finally:
        driver.quit()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
