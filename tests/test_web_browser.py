"""`siptrace web` in a real browser: Debian's chromium, driven by Selenium.

The real command serves a replayed capture; the browser searches through the form,
opens a call, follows a ladder arrow to its message and downloads the call's pcap.
Screenshots go to test-artifacts/web/ for a person to look at.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require_tool
from test_web import (EVIL_CALLID, HOSTILE, LEG_B, cli_env, free_port, replay_database,
                      wait_until_serving)

ARTIFACTS = REPO / "test-artifacts" / "web"
WAIT = 20  # seconds, for any page or download
CALL = "3-28455@127.0.0.1"
WINDOW = (1360, 900)


@pytest.fixture(scope="module")
def chrome():
    """(chromium, chromedriver): missing, the test fails under CI=true, else skips."""
    return require_tool("chromium"), require_tool("chromedriver")


@pytest.fixture(scope="module")
def base_url(chrome, tmp_path_factory):
    """The real `siptrace web` on a free loopback port; stopped whatever happens."""
    folder = tmp_path_factory.mktemp("web-browser")
    db_url = replay_database(folder / "trace.db")
    port = free_port()
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "siptrace", "web", "--db-url", db_url,
                                 "--listen", f"127.0.0.1:{port}"],
                                env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}/", {})
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def browser(chrome, tmp_path):
    """Headless chromium downloading into tmp_path/downloads; quit whatever happens."""
    chromium, chromedriver = chrome
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.execute_cdp_cmd("Page.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        driver.downloads = downloads
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page (the window grown to its height, then put back) as PNG."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WINDOW[0], min(max(height + 140, WINDOW[1]), 4000))
    path = ARTIFACTS / f"{name}.png"
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(*WINDOW)
    return path


def wait_for_download(folder: Path) -> Path:
    deadline = time.monotonic() + WAIT
    while True:
        done = [p for p in folder.iterdir() if p.suffix == ".pcap"]
        if done and not any(p.suffix == ".crdownload" for p in folder.iterdir()):
            return done[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no pcap downloaded within {WAIT}s: {list(folder.iterdir())}")
        time.sleep(0.1)


def test_search_call_ladder_message_and_pcap(base_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(base_url + "/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.calls tbody tr")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")) == 7
    screenshot(browser, "search")

    # type a filter into the form and submit it
    browser.find_element(By.NAME, "callid").send_keys("3-*")
    browser.find_element(By.NAME, "status").send_keys("2xx")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait.until(ec.url_contains("callid=3-"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")
    assert len(rows) == 1 and CALL in rows[0].text and "completed" in rows[0].text
    screenshot(browser, "search-filtered")

    # the call: its ladder, one linked arrow group per message
    rows[0].find_element(By.CSS_SELECTOR, "td a").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "div.ladder svg")))
    arrows = browser.find_elements(By.CSS_SELECTOR, "div.ladder svg g.arrow[data-row-id]")
    assert len(arrows) == 13
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == f"Call {CALL}"
    screenshot(browser, "call")

    # an arrow leads to its message, shown whole
    links = browser.find_elements(By.CSS_SELECTOR, "div.ladder svg a")
    row_id = arrows[2].get_attribute("data-row-id")
    links[2].click()
    wait.until(ec.url_contains(f"/message?id={row_id}"))
    text = browser.find_element(By.CSS_SELECTOR, "pre.msg").text
    assert text.startswith("INVITE sip:service@127.0.0.1:5080 SIP/2.0")
    assert f"Call-ID: {CALL}" in text and "m=audio" in text
    screenshot(browser, "message")

    # back to the call, and its pcap
    browser.find_element(By.LINK_TEXT, "← call").click()
    wait.until(ec.element_to_be_clickable((By.ID, "pcap-call"))).click()
    pcap = wait_for_download(browser.downloads)
    data = pcap.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"

    tshark = require_tool("tshark")
    fields = subprocess.run([tshark, "-n", "-r", str(pcap), "-Y", "sip", "-T", "fields",
                             "-e", "sip.Call-ID", "-e", "sip.CSeq.method"],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    lines = [line.split("\t") for line in fields.splitlines()]
    assert len(lines) == 13 and {callid for callid, _ in lines} == {CALL}
    assert [method for _, method in lines].count("BYE") == 4  # BYE and its 200, both hops


def test_hostile_legs_render_as_text(base_url, browser):
    """The B2BUA legs whose Call-ID, display name and reason hold markup: shown as text,
    no script run (no alert), both legs on one ladder."""
    from urllib.parse import quote

    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base_url}/call?callid={quote(LEG_B)}&legs=1")
    WebDriverWait(browser, WAIT).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "div.ladder svg")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "div.ladder svg g.arrow")) == 4
    legs = browser.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")
    assert len(legs) == 1 and HOSTILE in legs[0].text
    assert legs[0].find_element(By.CSS_SELECTOR, "a.callid").get_attribute("title") == EVIL_CALLID
    assert not browser.find_elements(By.TAG_NAME, "script")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    screenshot(browser, "call-legs")
