"""/status: the model, the JSON twin, escaping, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil

import pytest

from exporter.parser import DatasetQuality, Diagnostic, EventQuality, MatchKey
from exporter.snapshot import DatasetState, Snapshot
from exporter.status import status_html, status_model
from exporter.targets import Target
from exporter.web import WebServer
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
                last_message="Error validating access token",
            ),
        ),
    )


def test_model_orders_events_worst_first_and_ranks_opportunities():
    model = status_model(fleet())
    acme = model["datasets"][0]
    assert [e["event_name"] for e in acme["events"]] == ["PageView", "Purchase"] and acme["worst_emq"] == 4.1
    assert acme["top_diagnostic"]["name"] == "Server sending mismatched IP addresses"
    failing = model["datasets"][3]
    assert (failing["status"], failing["reason"], model["failing"]) == ("failing", "auth", 1)
    lifts = [(o["dataset_id"], o["event_name"], o["lift"]) for o in model["opportunities"]]
    assert lifts == [("111", "Purchase", 58.96), ("222", "AddToCart", 35.8), ("222", "Search", 32.9)]
    assert model["by_customer"][0] == {"customer": "acme", "opportunities": 1, "largest_lift": 58.96}


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
    assert [d["dataset_id"] for d in data["datasets"]] == ["111", "222", "333", "444"]
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
        page.goto(served + "/status")
        rows = page.locator("#datasets tbody tr")
        assert rows.count() == 4
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
        page.fill("#filter", "")
        assert page.locator("#opportunities tbody tr").first.locator("td").nth(1).inner_text() == "Acme shop"
        page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
        browser.close()
    assert dialogs == []  # the hostile event name ran nothing
    assert (tmp_path / "status.png").stat().st_size > 10_000
