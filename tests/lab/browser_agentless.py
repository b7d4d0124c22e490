"""Headless Chromium through the agentless gateway, run *inside* the lab's browser namespace.

    ip netns exec <ns> python tests/lab/browser_agentless.py CA.pem OUT_DIR

The root namespace cannot reach the lab, so the whole selenium session (this
program, chromedriver and Chromium) runs in the namespace.  Chromium trusts the
lab CA through an NSS database made with certutil in a fresh HOME, so the real
chain is verified (no --ignore-certificate-errors).  Prints one JSON object:
what each page showed, with a screenshot of each in OUT_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

APP = "https://app.mycompany.net"


def nss_trust(home: str, ca: str) -> None:
    db = os.path.join(home, ".pki", "nssdb")
    os.makedirs(db)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", "ztna lab CA", "-t", "C,,", "-i", ca],
                   check=True, capture_output=True)


def main() -> None:
    ca, out = sys.argv[1], sys.argv[2]
    users = json.loads(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    home = tempfile.mkdtemp(prefix="ztna-chromium-")
    nss_trust(home, ca)
    os.environ["HOME"] = home  # Chromium on Linux reads its trust from $HOME/.pki/nssdb
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={home}/profile", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-features=HttpsUpgrades",
                 "--window-size=900,600"):
        opts.add_argument(flag)
    result: dict = {"pages": []}
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver", log_output=os.path.join(out, "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(20)

    def page(step: str) -> dict:
        shot = os.path.join(out, f"{len(result['pages']) + 1:02d}-{step}.png")
        driver.save_screenshot(shot)
        p = {"step": step, "url": driver.current_url, "title": driver.title,
             "text": driver.find_element(By.TAG_NAME, "body").text[:600], "screenshot": shot}
        result["pages"].append(p)
        return p

    def sign_in(user: str) -> None:
        driver.find_element(By.ID, "user").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(users[user])
        driver.find_element(By.ID, "submit").click()
        time.sleep(0.3)

    try:
        result["version"] = driver.capabilities.get("browserVersion")
        driver.get(f"{APP}/")
        page("login")
        sign_in("alice")
        page("app")
        result["cookies"] = [{k: c.get(k) for k in ("name", "domain", "path", "secure", "httpOnly", "sameSite")}
                             for c in driver.get_cookies()]
        driver.refresh()
        page("reload")
        driver.get(f"{APP}/.ztna/logout")
        page("logout")
        driver.get(f"{APP}/")
        page("after-logout")
        sign_in("bob")
        page("forbidden")
    except WebDriverException as exc:
        result["error"] = f"{type(exc).__name__}: {exc.msg if hasattr(exc, 'msg') else exc}"
    finally:
        driver.quit()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
