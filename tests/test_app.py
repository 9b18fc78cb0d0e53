"""Process-wide settings that `exporter.cli.app.run` makes before it starts any thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PREPARED = """
import resource, sys
from exporter.cli.app import GIL_SWITCH_INTERVAL, prepare_process
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
prepare_process()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
print(sys.getswitchinterval() == GIL_SWITCH_INTERVAL, soft == hard or soft > 256)
"""


def test_the_gil_is_handed_over_often_and_the_file_limit_raised():
    out = subprocess.run([sys.executable, "-c", PREPARED], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
