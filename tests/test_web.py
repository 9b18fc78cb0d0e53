"""The HTTP endpoints over loopback, with a stand-in app that only holds a snapshot."""

from __future__ import annotations

import gzip

import httpx
import pytest

from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality, EventQuality
from exporter.state.snapshot import DatasetState, Snapshot
from exporter.web.server import WebServer
from tests.conftest import http


class FakeApp:
    def __init__(self):
        self.snapshot = Snapshot(generation=1, created=0, graph_api_version="v25.0", cycle_total=4, cycle_done=1)
        self.reload_result = (True, "configuration reloaded: 1 datasets")
        self.reloads = 0
        self.lifecycle = True
        self.reloadable = True

    def reload(self):
        self.reloads += 1
        return self.reload_result


@pytest.fixture
def served():
    app = FakeApp()
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    yield app, f"http://127.0.0.1:{server.address[1]}"
    server.stop()


def ready_snapshot():
    quality = DatasetQuality((EventQuality('Purchase "<b>"', composite_score=7.5),))
    state = DatasetState(Target("1", name="<script>x</script>"), quality, True, 1.0)
    return Snapshot(generation=2, created=0, datasets=(state,), graph_api_version="v25.0", ready=True, cycles=1)


def test_health_and_readiness(served):
    app, url = served
    assert http("GET", url + "/-/healthy")[0] == 200
    status, _, body = http("GET", url + "/-/ready")
    assert status == 503 and b"1/4" in body
    app.snapshot = ready_snapshot()
    assert http("GET", url + "/-/ready")[0] == 200
    assert http("HEAD", url + "/-/ready")[0] == 200


def test_metrics_text_openmetrics_and_gzip(served):
    app, url = served
    app.snapshot = ready_snapshot()
    status, headers, body = http("GET", url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert (
        b'meta_dataset_quality_event_match_quality_score{agent_name="",dataset_id="1",event_name="Purchase \\"<b>\\""} 7.5'
        in body
    )
    status, headers, om = http(
        "GET", url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")
    status, headers, packed = http("GET", url + "/metrics", headers={"Accept-Encoding": "gzip"})
    unpacked, marker = gzip.decompress(packed), b"# HELP process_"
    # process_* and python_* come last and change between two scrapes; the published part is the same
    assert headers["Content-Encoding"] == "gzip"
    assert unpacked[: unpacked.index(marker)] == body[: body.index(marker)]
    # one gzip member, not several: httpx's decoder (like curl's) reads only a first member
    decoded = httpx.get(url + "/metrics", headers={"Accept-Encoding": "gzip"}).text
    assert decoded.startswith("# HELP meta_dataset_quality_") and "process_resident_memory_bytes" in decoded
    assert decoded.index("meta_dataset_quality_build_info") < decoded.index("process_")
    assert b"process_resident_memory_bytes" in body and b"python_gc_objects_collected_total" in body


def test_reload(served):
    app, url = served
    status, _, body = http("POST", url + "/-/reload", data=b"")
    assert status == 200 and b"reloaded" in body and app.reloads == 1
    app.reload_result = (False, "reload refused, previous configuration kept.\nbad.yaml: datasets: expected a list")
    status, _, body = http("POST", url + "/-/reload", data=b"")
    assert status == 500 and b"bad.yaml: datasets" in body
    status, headers, body = http("GET", url + "/-/reload")
    assert status == 405 and headers["Allow"] == "POST" and b"POST" in body
    assert app.reloads == 2  # GET never reloads


def test_reload_answers_only_with_the_lifecycle_flag(served):
    app, url = served
    app.lifecycle = False  # the default, as in Prometheus
    status, _, body = http("POST", url + "/-/reload", data=b"")
    assert status == 403 and b"--web.enable-lifecycle" in body and b"SIGHUP" in body
    assert app.reloads == 0


def test_landing_page_escapes_and_links(served):
    app, url = served
    app.snapshot = ready_snapshot()
    status, headers, body = http("GET", url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="metrics"' in body and b"Targets" in body and b"<script>" not in body


def test_the_landing_page_offers_only_the_reload_that_works(served):
    app, url = served
    app.snapshot = ready_snapshot()
    assert b"POST <code>/-/reload</code>" in http("GET", url + "/")[2]
    app.lifecycle = False  # POST /-/reload answers 403: the page says SIGHUP
    page = http("GET", url + "/")[2]
    assert b"SIGHUP re-reads" in page and b"needs --web.enable-lifecycle" in page
    app.reloadable = False  # the demo: no file to read again
    page = http("GET", url + "/")[2]
    assert b"nothing to reload" in page and b"/-/reload" not in page


def test_unknown_paths(served):
    _, url = served
    assert http("GET", url + "/nope")[0] == 404
    assert http("POST", url + "/metrics", data=b"")[0] == 405


def test_status_takes_a_customer_and_refuses_a_flood_of_parameters(served):
    app, url = served
    app.snapshot = ready_snapshot()
    assert http("GET", url + "/status?customer=acme")[0] == 200
    assert http("GET", url + "/status?format=json&customer=" + "x" * 5000)[0] == 200  # cut, not refused
    status, _, body = http("GET", url + "/status?" + "&".join(f"a{n}=1" for n in range(50)))
    assert status == 400 and b"Too many query parameters" in body
