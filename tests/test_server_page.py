"""The built-in chat page (GET /) in headless Chromium: type a message, wait
for the streamed reply and its tokens/s, and check they appeared. Needs
Debian's chromium + chromium-driver and the selenium package (scripts/deps.sh
installs them)."""
import shutil

import pytest

from peregrine_server import Server

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (scripts/deps.sh)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    assert s.stop() == 0
    s.cleanup()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not shutil.which(DRIVER):
        pytest.skip("chromium / chromedriver not installed (scripts/deps.sh)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,800"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()


def test_chat_page_streams_a_reply_with_tokens_per_second(srv, browser):
    browser.get(srv.url + "/?temperature=0&max_tokens=24")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text == srv.model)
    box = browser.find_element(By.ID, "input")
    box.send_keys("What is the capital of France?")
    browser.find_element(By.ID, "send").click()
    # the user's message, then the assistant's streamed reply and its stats
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")
                                      and d.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text)
    user = browser.find_element(By.CSS_SELECTOR, ".msg.user .text").text
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text
    stats = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .stats")
    assert user == "What is the capital of France?"
    assert "Paris" in reply, reply
    assert "tok/s" in stats.text and float(stats.get_attribute("data-tokens-per-second")) > 0
    assert "error" not in browser.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("class")
    # the page's request went through the API like any client's
    WebDriverWait(browser, 10).until(lambda d: "route=/v1/chat/completions status=200" in srv.read_log())
