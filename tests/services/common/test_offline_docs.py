"""/docs (Swagger UI) and /redoc (ReDoc) render with no network beyond the service (services/common/docs.py)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import start_service

PAGES = ("/docs", "/redoc")
SERVICES = ("embed", "rerank", "llm", "pipeline")


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> dict:
    """Each service's app as its factory builds it; the model is not loaded (no lifespan), the pages need none."""
    from nimrag.pipeline.app import create_app as pipeline_app
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.services.embed.app import create_app as embed_app
    from nimrag.services.llm.app import create_app as llm_app
    from nimrag.services.rerank.app import create_app as rerank_app

    pipeline = pipeline_app(PipelineSettings(data_path=tmp_path_factory.mktemp("docs-pipeline")))
    return {"embed": embed_app(), "rerank": rerank_app(), "llm": llm_app(), "pipeline": pipeline}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def page_links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("service", SERVICES)
def test_pages_name_only_local_assets_and_every_one_answers(apps, service):
    client = TestClient(apps[service])
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://|//cdn", response.text), f"{service} {page} names an outside URL"
        links = page_links(response.text)
        assert any(link.endswith(".js") for link in links), links  # the UI's bundle is among them
        for link in links:
            assert link.startswith("/") and not link.startswith("//"), link
            asset = client.get(link)
            assert asset.status_code == 200 and asset.content, f"{service} {page}: {link} answers {asset.status_code}"
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_the_assets_need_an_api_key_exactly_when_docs_does(tmp_path):
    from nimrag.pipeline.app import create_app
    from nimrag.pipeline.settings import PipelineSettings

    client = TestClient(create_app(PipelineSettings(data_path=tmp_path, api_keys="sesame")))
    paths = [*PAGES, "/docs/static/swagger-ui-bundle.js", "/docs/static/redoc.standalone.js", "/openapi.json"]
    assert {path: client.get(path).status_code for path in paths} == dict.fromkeys(paths, 401)
    key = {"Authorization": "Bearer sesame"}
    assert {path: client.get(path, headers=key).status_code for path in paths} == dict.fromkeys(paths, 200)


# --- a real browser ----------------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed (Debian: apt-get install "
    "chromium chromium-driver; scripts/test installs them when it runs as root with apt-get)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-default-apps",
                     # no name resolves but loopback: whatever the page asked of the internet could not arrive
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the DevTools Network events
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requests_sent(driver) -> tuple[list[str], set[str]]:
    """The URLs the pages asked for, and the ids of requests the page's Content-Security-Policy stopped in the
    browser (they never reached the network)."""
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [(e["params"]["requestId"], e["params"]["request"]["url"]) for e in events
            if e["method"] == "Network.requestWillBeSent"]
    blocked = {e["params"]["requestId"] for e in events
               if e["method"] == "Network.loadingFailed" and e["params"].get("blockedReason") == "csp"}
    return [url for request_id, url in sent if request_id not in blocked], blocked


@needs_chromium
def test_swagger_ui_and_redoc_render_with_no_request_beyond_the_service(tmp_path: Path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pipeline = start_service("pipeline", tmp_path, env={"NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data")})
    try:
        def rendered(selector: str):
            return WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))

        browser.get(pipeline.base_url + "/docs")
        assert "nimrag RAG pipeline" in rendered(".swagger-ui .info .title")[0].text
        assert len(rendered(".swagger-ui .opblock")) > 10  # the operations of /openapi.json (OpenAPI 3.1)
        browser.get(pipeline.base_url + "/redoc")
        assert "nimrag RAG pipeline" in rendered(".api-info h1")[0].text
        assert rendered("[data-section-id^='operation/']")  # ReDoc laid out the operations

        urls, _ = requests_sent(browser)  # ReDoc's menu logo (cdn.redoc.ly) is stopped by the pages' policy
        local = re.compile(rf"^({re.escape(pipeline.base_url)}/|data:|blob:{re.escape(pipeline.base_url)}/)")
        assert [url for url in urls if not local.match(url)] == []
        assert {f"{pipeline.base_url}{path}" for path in (
            "/docs", "/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/openapi.json", "/redoc",
            "/docs/static/redoc.standalone.js")} <= set(urls)  # the log saw the pages' own requests
    finally:
        pipeline.stop()
