"""/status: the model, the JSON twin, escaping, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil

import pytest

from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality, Diagnostic, EventQuality, MatchKey
from exporter.state.snapshot import DatasetState, Snapshot
from exporter.web.server import WebServer
from exporter.web.status import status_html, status_model
from tests.conftest import http

HOSTILE = "<img src=x onerror=alert(1)>"


def fleet() -> Snapshot:
    def ds(dataset_id, name, customer, events, success=True, **kw):
        target = Target(dataset_id, name=name, labels=(("customer", customer),), business_name="Biz")
        return DatasetState(
            target, DatasetQuality(tuple(events)) if success else None, success, 1.7e9 if success else None, **kw
        )

    mismatched = Diagnostic(
        "server_sending_mismatched_ip_addresses",
        "Server sending mismatched IP addresses",
        "d",
        "Send the client IP.",
        61.5,
        10,
        20,
    )
    return Snapshot(
        generation=1,
        created=1.7e9,
        graph_api_version="v25.0",
        datasets=(
            ds(
                "111",
                "Acme shop",
                "acme",
                [
                    EventQuality(
                        "Purchase",
                        composite_score=7.2,
                        match_keys=(MatchKey("email", 60, 58.96),),
                        diagnostics=(mismatched,),
                    ),
                    EventQuality("PageView", composite_score=4.1, potential_acr_increase=None),
                ],
            ),
            ds(
                "222",
                "Globex",
                "globex",
                [
                    EventQuality(HOSTILE, composite_score=2.5),
                    EventQuality("Search", potential_acr_increase=32.9),
                    EventQuality("AddToCart", coverage=20, coverage_potential_acr_increase=35.8),
                ],
            ),
            ds("333", "Initech", "initech", [EventQuality("Lead", composite_score=9.1)]),
            ds(
                "444",
                "Umbrella",
                "umbrella",
                [],
                success=False,
                last_reason="auth",
                last_message="Error validating access token: Session has expired on Sunday, 01-Nov-26 09:00:00 PST. "
                + "The current time is Monday, 02-Nov-26 10:00:00 PST. " * 8
                + "(reason=auth, code=190/463, fbtrace_id=AbCdEfGhIjKlMnOpQrStUvW)",
            ),
        ),
    )


def test_model_orders_events_worst_first_and_ranks_opportunities():
    model = status_model(fleet())
    # failing first, then the worst EMQ first: Umbrella (auth), Globex 2.5, Acme 4.1, Initech 9.1
    assert [d["dataset_id"] for d in model["datasets"]] == ["444", "222", "111", "333"]
    acme = model["datasets"][2]
    assert [e["event_name"] for e in acme["events"]] == ["PageView", "Purchase"] and acme["worst_emq"] == 4.1
    assert acme["top_diagnostic"]["name"] == "Server sending mismatched IP addresses"
    failing = model["datasets"][0]
    assert (failing["status"], failing["reason"], model["failing"]) == ("failing", "auth", 1)
    lifts = [(o["dataset_id"], o["event_name"], o["lift"]) for o in model["opportunities"]]
    assert lifts == [("111", "Purchase", 58.96), ("222", "AddToCart", 35.8), ("222", "Search", 32.9)]
    by_customer = {c["customer"]: c for c in model["by_customer"]}
    assert by_customer["acme"] == {
        "customer": "acme",
        "datasets": 1,
        "failing": 0,
        "worst_emq": 4.1,
        "emq_change_day": None,
        "emq_change_week": None,
        "opportunities": 1,
        "largest_lift": 58.96,
    }
    assert model["by_customer"][0]["customer"] == "umbrella"  # the customers with failing datasets first
    assert failing["advice"].startswith("Meta refused the access token") and acme["emq_band"] == "ok"


def test_by_customer_counts_every_opportunity_and_the_page_says_when_a_list_is_cut():
    from exporter.web import status

    quality = DatasetQuality(tuple(EventQuality(f"E{i}", potential_acr_increase=50 + i / 1000) for i in range(150)))
    small = DatasetQuality((EventQuality("Lead", potential_acr_increase=1.0),))
    snap = Snapshot(
        generation=1,
        created=0,
        datasets=(
            DatasetState(Target("1", labels=(("customer", "big"),)), quality, True, 1.0),
            DatasetState(Target("2", labels=(("customer", "small"),)), small, True, 1.0),
        ),
    )
    model = status_model(snap)
    assert len(model["opportunities"]) == status.MAX_OPPORTUNITIES and model["opportunities_total"] == 151
    assert {c["customer"]: c["opportunities"] for c in model["by_customer"]} == {"big": 150, "small": 1}
    assert "Showing the 100 largest of 151 opportunities" in status_html(snap).decode()


def test_html_escapes_every_api_string():
    page = status_html(fleet()).decode()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "http" not in page.split("<body>")[1].replace('href="status?format=json"', "")  # no external assets


@pytest.fixture
def served():
    class App:
        snapshot = fleet()

        @staticmethod
        def reload():
            return True, ""

    server = WebServer(App(), "127.0.0.1", 0)
    server.start()
    yield f"http://127.0.0.1:{server.address[1]}"
    server.stop()


def test_json_twin(served):
    status, headers, body = http("GET", served + "/status?format=json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert [d["dataset_id"] for d in data["datasets"]] == ["444", "222", "111", "333"]
    assert data["datasets"][1]["events"][0]["event_name"] == HOSTILE  # JSON carries the raw text


def test_page_in_headless_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it)"
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        page = browser.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(served + "/status")
        rows = page.locator("#datasets tbody tr")
        assert rows.count() == 4
        # as served: failing first, then the worst EMQ first
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(4)] == [
            "Umbrella", "Globex", "Acme shop", "Initech"
        ]  # fmt: skip
        failure = rows.first.locator("td.failure")
        assert (
            failure.inner_text()
            == "Meta refused the access token: replace it (a token file is read again by itself). (auth)"
        )
        assert "fbtrace_id" in failure.get_attribute("title")  # Meta's own words, on hover
        widths = [rows.first.locator("td").nth(i).bounding_box()["width"] for i in range(13)]
        assert widths[12] <= 500  # the long failure text wraps in its own column
        assert min(widths[:12]) >= 30, widths  # and squeezes none of the others
        legend = page.locator("#legend")  # what the colours mean, in Meta's bands
        assert legend.inner_text() == "Event Match Quality, Meta's bands: poor 0+ ok 4+ good 6+ great 8+"
        worst = rows.nth(1).locator("td").nth(7)  # Globex, 2.5: poor
        assert worst.get_attribute("class") == "num emq-poor"
        assert worst.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(248, 215, 218)"
        page.click("nav a[href='#by-customer']")
        assert page.evaluate("location.hash") == "#by-customer"
        top = page.locator("#by-customer").evaluate("e => e.getBoundingClientRect().top")
        assert 0 <= top < page.evaluate("innerHeight")  # the section is in view
        page.screenshot(path=str(tmp_path / "status-failing.png"), full_page=True)
        assert page.get_by_text(HOSTILE).count() >= 1  # shown as text
        assert page.locator("#datasets img").count() == 0  # and not as an element
        page.locator("#datasets th", has_text="Worst EMQ").click()
        first_column = [rows.nth(i).locator("td").first.inner_text() for i in range(4)]
        assert first_column[:3] == ["Globex", "Acme shop", "Initech"]  # 2.5, 4.1, 9.1; no score last
        page.locator("#datasets th", has_text="Worst EMQ").click()
        assert rows.first.locator("td").first.inner_text() in ("Umbrella", "Initech")
        page.fill("#filter", "globex")
        visible = [r for r in range(4) if rows.nth(r).is_visible()]
        assert len(visible) == 1 and rows.nth(visible[0]).locator("td").first.inner_text() == "Globex"
        page.fill("#filter", "auth")
        assert sum(rows.nth(r).is_visible() for r in range(4)) == 1
        page.fill("#filter", "acme")  # the filter filters every table, not only the datasets
        for table in ("#opportunities", "#customers"):
            shown = [r for r in page.locator(f"{table} tbody tr").all() if r.is_visible()]
            assert shown and all("acme" in r.inner_text().lower() for r in shown), table
        page.fill("#filter", "")
        assert page.locator("#opportunities tbody tr").first.locator("td").nth(1).inner_text() == "Acme shop"
        page.click("#customers a:text('globex')")  # a page for one customer, to share with its team
        page.wait_for_url("**/status?customer=globex")
        assert [r.locator("td").first.inner_text() for r in page.locator("#datasets tbody tr").all()] == ["Globex"]
        assert "Customer globex only" in page.locator("body").inner_text()
        page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
        browser.close()
    assert dialogs == []  # the hostile event name ran nothing
    assert (tmp_path / "status.png").stat().st_size > 10_000


def test_each_events_volume_is_shown_by_source_and_an_event_that_stopped_is_flagged():
    from exporter.graph.stats import EventVolume

    hour = 1_765_101_600.0
    volume = EventVolume(
        hour,
        (
            ("Lead", "browser", 12),
            ("Lead", "server", 11),
            ("Purchase", "browser", 40),
            ("Purchase", "server", 0),
            ("Rare", "server", 0),
            ("Tiny", "server", 0),
        ),
        # Purchase had 30 server events an hour ago; Rare 40 three days ago and Tiny 1 an hour ago: no flag for them
        (
            ("Lead", "browser", hour, 12),
            ("Lead", "server", hour, 11),
            ("Purchase", "browser", hour, 40),
            ("Purchase", "server", hour - 3600, 30),
            ("Rare", "server", hour - 3 * 86400, 40),
            ("Tiny", "server", hour - 3600, 1),
        ),
    )
    state = DatasetState(Target("333", name="Shop"), DatasetQuality((), volume=volume), True, 1.7e9)
    snap = Snapshot(generation=1, created=1.7e9, datasets=(state,))
    (dataset,) = status_model(snap)["datasets"]
    assert dataset["volume"]["hour_start"] == "2025-12-07T10:00:00Z"
    assert dataset["volume"]["events"][0] == {
        "event_name": "Purchase",
        "browser": 40,
        "server": 0,
        "stopped": ["server"],
    }
    assert [e["stopped"] for e in dataset["volume"]["events"][1:]] == [[], [], []]
    page = status_html(snap).decode()
    assert (
        'class="stopped">Purchase: server stopped · Purchase 40 / 0 · Lead 12 / 11 · Rare - / 0 · Tiny - / 0</td>'
        in page
    )
