"""Two scrapers in a process of their own, as an HA Prometheus pair would be: they scrape /metrics until
stdin closes, then print every scrape's latency in seconds as JSON. In the exporter's own process, their
threads would compete with it for the GIL, which no real scraper does.

    python bench/scrapers.py PORT gzip|plain < pipe
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time


def main() -> None:
    port, label = int(sys.argv[1]), sys.argv[2]
    headers = {"Accept-Encoding": "gzip"} if label == "gzip" else {}
    times: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            times.append(time.perf_counter() - started)
            time.sleep(0.05)  # a scraper, not a load generator
        conn.close()

    threads = [threading.Thread(target=scraper) for _ in range(2)]
    for thread in threads:
        thread.start()
    sys.stdin.read()  # until the benchmark closes the pipe
    stop.set()
    for thread in threads:
        thread.join(300)
    json.dump(times, sys.stdout)


if __name__ == "__main__":
    main()
