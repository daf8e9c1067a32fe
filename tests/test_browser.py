"""The tracker in a real browser: Debian's Chromium driven by Playwright against a live standalone."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import BROWSER
from tests.test_processes import clean_env, cli, free_port, start, stop, wait_ready

CHROMIUM = shutil.which("chromium")
IN_CI = os.environ.get("CI") == "true"
# Skipped on a developer's machine without it; in CI (which installs it) a missing browser fails these tests.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not IN_CI,
                                reason="Debian's chromium is not installed (apt-get install chromium)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

PAGE = """<!doctype html><html><head><title>shop</title>
<script>window.oa=window.oa||function(){{(oa.q=oa.q||[]).push(arguments)}};oa('event','queued_before_load');</script>
<script defer src="{api}/oa.js" data-site-id="{site}" {extra}></script></head><body>shop</body></html>"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    env = clean_env(OA_DATA_DIR=str(tmp / "data"))
    project = cli(env, "projects", "create", "--name", "Browser", "--plan", "pro", "--domain", "localhost")
    key = cli(env, "keys", "create", "--project", project["id"], "--scope", "stats:read")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    proc = start(env, "standalone", "--port", str(port), log=tmp / "standalone.log")
    wait_ready(api, proc, tmp / "standalone.log")
    site = tmp / "site"
    site.mkdir()
    for name, extra in (("app.html", ""), ("dnt.html", 'data-respect-dnt="true"'), ("optout.html", ""), ("back.html", "")):
        (site / name).write_text(PAGE.format(api=api, site=project["site_id"], extra=extra))
    (site / "elsewhere.html").write_text("<!doctype html><title>another site's page</title>")
    pages = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    yield {"api": api, "project": project["id"], "headers": {"Authorization": f"Bearer {key['secret']}"},
           "pages": f"http://localhost:{pages.server_address[1]}"}
    pages.shutdown()
    assert stop(proc) == 0


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("CI=true but Debian's chromium is missing: the browser tests must run", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def arrivals(platform, page: str) -> list[dict]:
    body = httpx.get(f"{platform['api']}/v1/projects/{platform['project']}/verify", headers=platform["headers"]).json()
    return [a for a in reversed(body["arrivals"]) if f"/{page}" in a["url"] or "/spa/" in a["url"] and page == "app.html"]


def collect_requests(page) -> list[str]:
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/collect") else None)
    return sent


def test_pageviews_spa_navigation_events_and_conversions_arrive(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    page = context.new_page()
    page.goto(f"{platform['pages']}/app.html")
    page.wait_for_function("window.oa && !window.oa.q")
    page.evaluate("history.pushState({}, '', '/spa/one')")
    page.evaluate("history.pushState({}, '', '/spa/two')")
    page.evaluate("history.replaceState({}, '', '/spa/two')")  # the same page: not counted again
    page.evaluate("oa('event', 'signup', {plan: 'pro', currency: 'EUR'})")  # only a conversion's is money
    page.evaluate("oa('conversion', 'purchase', {revenue: 49.99, currency: 'USD', plan: 'pro'})")
    expected = [("pageview", None, "/app.html"), ("event", "queued_before_load", "/app.html"),
                ("pageview", None, "/spa/one"), ("pageview", None, "/spa/two"),
                ("event", "signup", "/spa/two"), ("conversion", "purchase", "/spa/two")]
    deadline = time.monotonic() + 15
    while True:
        found = arrivals(platform, "app.html")
        if (len(found) >= len(expected) and all(a["stored"] for a in found)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    context.close()
    # Beacons sent in the same instant may arrive in either order.
    key = lambda e: (e[0], e[1] or "", e[2])  # noqa: E731
    got = [(a["event_type"], a["event_name"], urlsplit(a["url"]).path) for a in found]
    assert sorted(got, key=key) == sorted(expected, key=key), found
    assert all(a["outcome"] == "accepted" and a["stored"] for a in found), found
    today = time.strftime("%Y-%m-%d", time.gmtime())
    views = httpx.get(f"{platform['api']}/v1/projects/{platform['project']}/pageviews",
                      params={"from": today, "to": today, "group_by": "path"}, headers=platform["headers"]).json()
    assert {r["path"]: r["pageviews"] for r in views["results"]} == {"/app.html": 1, "/spa/one": 1, "/spa/two": 1}
    assert views["totals"] == {"pageviews": 3, "visitors": 1, "events": 6}
    stats = httpx.get(f"{platform['api']}/v1/projects/{platform['project']}/stats",
                      params={"from": today, "to": today, "metrics": "conversions,revenue"}, headers=platform["headers"]).json()
    assert stats["results"] == {"conversions": 1, "revenue": {"USD": "49.9900"}}
    events = httpx.get(f"{platform['api']}/v1/projects/{platform['project']}/events",
                       params={"from": today, "to": today, "event_name": "signup"}, headers=platform["headers"]).json()
    assert [e["properties"] for e in events["results"]] == [{"plan": "pro", "currency": "EUR"}]


def test_back_forward_and_coming_back_are_pageviews_a_reload_is_not(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    page = context.new_page()
    sent = collect_requests(page)

    def pageviews() -> list[str]:
        page.wait_for_timeout(300)
        return [urlsplit(json.loads(body)["url"]).path for body in sent if '"pageview"' in body]

    page.goto(f"{platform['pages']}/back.html")
    page.wait_for_function("window.oa && !window.oa.q")
    page.evaluate("history.pushState({}, '', '/spa/back-two')")
    page.evaluate("history.back()")  # popstate: back on the first page
    assert pageviews() == ["/back.html", "/spa/back-two", "/back.html"]
    page.reload()
    page.wait_for_function("window.oa && !window.oa.q")
    assert pageviews() == ["/back.html", "/spa/back-two", "/back.html"], "a reload is the same view"
    page.goto(f"{platform['pages']}/elsewhere.html")
    page.goto(f"{platform['pages']}/back.html")  # the same tab, back from elsewhere: a new view
    page.wait_for_function("window.oa && !window.oa.q")
    assert pageviews() == ["/back.html", "/spa/back-two", "/back.html", "/back.html"]
    context.close()


def test_without_send_beacon_hits_go_by_fetch_keepalive(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    context.add_init_script("Navigator.prototype.sendBeacon = function () { return false; }")  # refused
    page = context.new_page()
    fetched: list[tuple[str, bool]] = []
    page.on("request", lambda r: fetched.append((r.resource_type, '"pageview"' in (r.post_data or "")))
            if r.url.endswith("/collect") else None)
    page.goto(f"{platform['pages']}/optout.html?no-beacon")
    page.wait_for_function("window.oa && !window.oa.q")
    deadline = time.monotonic() + 10
    while not any("no-beacon" in a["url"] and a["event_type"] == "pageview" for a in arrivals(platform, "optout.html")):
        assert time.monotonic() < deadline, "the pageview did not arrive"
        time.sleep(0.2)
    context.close()
    assert ("fetch", True) in fetched, fetched


def test_do_not_track_sends_nothing(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})")
    page = context.new_page()
    sent = collect_requests(page)
    page.goto(f"{platform['pages']}/dnt.html")
    page.wait_for_function("window.oa && !window.oa.q")
    page.evaluate("history.pushState({}, '', '/dnt.html?next'); oa('event', 'x'); oa('conversion', 'y', {revenue: 1, currency: 'EUR'})")
    page.wait_for_timeout(500)
    assert page.evaluate("[localStorage.length, sessionStorage.length]") == [0, 0], "no-op: nothing stored either"
    context.close()
    assert sent == []
    assert arrivals(platform, "dnt.html") == []


def test_in_page_anchors_are_not_pageviews(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    page = context.new_page()
    sent = collect_requests(page)
    page.goto(f"{platform['pages']}/optout.html?anchors")
    page.wait_for_function("window.oa && !window.oa.q")
    page.evaluate("location.hash = '#faq'; location.hash = '#top'; history.back()")
    page.wait_for_timeout(500)
    context.close()
    pageviews = [body for body in sent if '"pageview"' in body]
    assert len(pageviews) == 1 and "#" not in pageviews[0], sent


def test_opt_out_stops_everything_and_clears_local_ids(platform, chromium):
    context = chromium.new_context(user_agent=BROWSER)
    page = context.new_page()
    sent = collect_requests(page)
    page.goto(f"{platform['pages']}/optout.html")
    page.wait_for_function("window.oa && !window.oa.q")
    page.evaluate("oa('identify', 'user-42', {tier: 'gold'})")
    page.wait_for_timeout(200)
    assert page.evaluate("localStorage.getItem('_oaa_uid')") == "user-42"
    assert page.evaluate("sessionStorage.getItem('_oaa_sid')") is not None
    before = len(sent)
    assert before == 3  # the pageview, the queued event, the identify
    page.evaluate("oa('optOut')")
    assert page.evaluate("[localStorage.getItem('_oaa_uid'), sessionStorage.getItem('_oaa_sid')]") == [None, None]
    page.evaluate("history.pushState({}, '', '/optout.html?after'); oa('event', 'after'); oa('identify', 'again')")
    stored = "[localStorage.getItem('_oaa_uid'), sessionStorage.getItem('_oaa_sid')]"
    assert page.evaluate(stored) == [None, None], "nothing is written back after optOut"
    page.reload()  # the opt-out outlives the page
    page.wait_for_function("typeof window.oa === 'function'")
    page.evaluate("oa('event', 'after_reload')")
    page.wait_for_timeout(500)
    context.close()
    assert len(sent) == before, sent[before:]
