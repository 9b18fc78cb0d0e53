"""Process-wide settings that `exporter.app.run` makes before it starts any thread."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A thread allocates 12 MB in blocks below glibc's mmap threshold and keeps them; the growth of the main
# heap ([heap] in /proc/self/smaps) says which arena they came from.
THREAD_ALLOCATES = """
import sys, threading
from pathlib import Path
from exporter.app import share_one_malloc_arena

def heap_kib():
    lines = Path("/proc/self/smaps").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("[heap]"))
    return next(int(line.split()[1]) for line in lines[at + 1 :] if line.startswith("Rss:"))

shared = share_one_malloc_arena() if sys.argv[1] == "share" else False
before, kept = heap_kib(), []
thread = threading.Thread(target=lambda: kept.extend(bytearray(60_000) for _ in range(200)))
thread.start()
thread.join()
print(shared, heap_kib() - before)
"""


def heap_growth(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", THREAD_ALLOCATES, mode], cwd=ROOT, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


GLIBC_LINUX = Path("/proc/self/smaps").exists() and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc on Linux only")
def test_threads_allocate_from_the_main_arena_once_shared():
    shared, growth = heap_growth("share")
    assert shared == "True" and growth > 10_000  # KiB: the thread's 12 MB landed in the main heap
    alone, growth = heap_growth("default")
    assert alone == "False" and growth < 2_000  # without it, the thread had an arena of its own


def test_a_user_setting_for_malloc_arenas_is_left_alone():
    shared, _ = heap_growth("share", {"MALLOC_ARENA_MAX": "4"})
    assert shared == "False"
