"""Screenshot of the playground on the bundled model, for the README: two attributes, three streamed samples.

    python scripts/playground_screenshot.py [--out benchmarks/results/playground.png]

Needs Debian's chromium and chromium-driver."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from dglm import Pipeline
from dglm.server import create_app, serve_in_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/playground.png"))
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--window-size=900,1350"):
        options.add_argument(flag)
    with serve_in_thread(create_app(Pipeline.from_pretrained())) as url:
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(url)
            while not browser.find_elements(By.CSS_SELECTOR, "#attributes .attribute"):
                time.sleep(0.1)
            browser.find_element(By.ID, "add").click()
            second = browser.find_elements(By.CSS_SELECTOR, "#attributes .attribute")[1]
            Select(second.find_element(By.CSS_SELECTOR, ".name")).select_by_value("topic")
            Select(second.find_element(By.CSS_SELECTOR, ".label")).select_by_value("sport")
            browser.execute_script("const w = arguments[0]; w.value = 2; w.dispatchEvent(new Event('input'))",
                                   second.find_element(By.CSS_SELECTOR, ".w"))
            prefix = browser.find_element(By.ID, "prefix")
            prefix.clear()
            prefix.send_keys("The match last night")
            browser.find_element(By.ID, "seed").send_keys("0")
            browser.find_element(By.ID, "go").click()
            while browser.find_element(By.ID, "status").text != "Done.":
                time.sleep(0.2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
            print(f"wrote {args.out}")
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
