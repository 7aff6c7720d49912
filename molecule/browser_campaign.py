"""A staff member's whole job in a real browser: log in, mail many students, watch it finish.

Run by molecule/shared/tests/test_web_page.py inside the network namespace of a scenario's
container (``nsenter --net``), so https://127.0.0.1/ is that server's Nginx exactly as a
browser on the server would see it, while Chromium and Selenium come from the controller.

    python browser_campaign.py --base https://127.0.0.1 --user U --password P \
        --recipients FILE --subject S --screenshot OUT.png [--non-staff-user U2 --non-staff-password P2]

Prints one JSON object: what the browser saw at each step (URLs, the counts the campaign page
showed, its progress bar, the time from the click on "Send" to the campaign page), so the
test can assert on all of it and the closing note can quote the submit time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CAMPAIGN_URL = re.compile(r"/bulk-email/campaigns/([0-9a-f-]{36})/$")


def browser() -> WebDriver:
    """Headless Chromium; the site's certificate is self-signed, so it is accepted as is."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1000,1200", "--ignore-certificate-errors"):
        options.add_argument(flag)
    options.accept_insecure_certs = True
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def log_in(driver: WebDriver, base: str, user: str, password: str, next_path: str) -> None:
    """Django admin's login form, as a person fills it in."""
    driver.get(f"{base}/admin/login/?next={next_path}")
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "[type=submit]").click()


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def campaign_view(driver: WebDriver) -> dict:
    """What the campaign page shows right now."""
    progress = driver.find_element(By.ID, "campaign-progress")
    return {
        "state": driver.find_element(By.ID, "campaign").get_attribute("data-state"),
        "progress_value": progress.get_attribute("value"),
        "progress_max": progress.get_attribute("max"),
        "percent": text_of(driver, "campaign-percent"),
        "sent": text_of(driver, "count-sent"),
        "failed": text_of(driver, "count-failed"),
        "pending": text_of(driver, "count-pending"),
    }


def send_campaign(driver: WebDriver, args: argparse.Namespace, result: dict) -> None:
    """Fill in the site's own page, send, and follow the campaign page until it says done."""
    log_in(driver, args.base, args.user, args.password, "/")
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.NAME, "recipients")))
    result["form_url"] = driver.current_url
    driver.find_element(By.NAME, "subject").send_keys(args.subject)
    driver.find_element(By.NAME, "body").send_keys("Dear student, the exam timetable changed.")
    # A pasted list: typing 500 addresses key by key would only test the keyboard.
    recipients = Path(args.recipients).read_text(encoding="utf-8")
    field = driver.find_element(By.NAME, "recipients")
    driver.execute_script("arguments[0].value = arguments[1];", field, recipients)
    started = time.monotonic()
    driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    WebDriverWait(driver, 120).until(lambda d: CAMPAIGN_URL.search(d.current_url))
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "campaign")))
    result["submit_seconds"] = round(time.monotonic() - started, 3)
    result["campaign_url"] = driver.current_url
    result["campaign_id"] = CAMPAIGN_URL.search(driver.current_url).group(1)
    result["first_view"] = campaign_view(driver)
    result["messages"] = [el.text for el in driver.find_elements(By.CSS_SELECTOR, ".messages li, .message")]
    # The page updates itself: no reload from here on.
    try:
        WebDriverWait(driver, args.timeout, poll_frequency=1).until(
            lambda d: d.find_element(By.ID, "campaign").get_attribute("data-state") == "done"
        )
    except TimeoutException:
        result["timed_out"] = True
    result["final_view"] = campaign_view(driver)
    result["final_url"] = driver.current_url
    driver.save_screenshot(args.screenshot)


def check_non_staff(driver: WebDriver, args: argparse.Namespace, campaign_url: str, result: dict) -> None:
    """A signed-in non-staff user and an anonymous visitor get neither the pages nor the list."""
    driver.delete_all_cookies()
    driver.get(campaign_url)
    result["anonymous"] = {"url": driver.current_url, "has_recipient": args.probe in driver.page_source}
    if args.non_staff_user:
        log_in(driver, args.base, args.non_staff_user, args.non_staff_password, "/bulk-email/")
        result["non_staff"] = {"url": driver.current_url}
        driver.get(campaign_url)
        result["non_staff"].update(
            campaign_url=driver.current_url, has_recipient=args.probe in driver.page_source
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="https://127.0.0.1")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--non-staff-user", default="")
    parser.add_argument("--non-staff-password", default="")
    parser.add_argument("--recipients", required=True, help="File with one address per line.")
    parser.add_argument("--probe", required=True, help="A recipient address no non-staff page may show.")
    parser.add_argument("--subject", default="Exam timetable (browser)")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    result: dict = {}
    driver = browser()
    try:
        send_campaign(driver, args, result)
        check_non_staff(driver, args, result["campaign_url"], result)
    except Exception as exc:  # reported to the test, which fails with what the browser saw
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["error_url"] = driver.current_url
        result["error_page"] = driver.page_source[:3000]
    finally:
        driver.quit()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
