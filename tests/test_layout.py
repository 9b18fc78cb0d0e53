"""The package layout: one package per pipeline stage, and dependencies that only point down the pipeline."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import exporter

ROOT = Path(__file__).parent.parent
# Each package, and the packages it may import (besides itself and `exporter` for __version__).
ALLOWED = {
    "common": set(),
    "graph": {"common"},
    "config": {"common", "graph"},
    "state": {"common", "graph", "config"},
    "exposition": {"common", "graph", "config", "state"},
    "collect": {"common", "graph", "config", "state", "exposition"},
    "web": {"common", "graph", "config", "state", "exposition"},
    "cli": {"common", "graph", "config", "state", "exposition", "collect", "web", "simulator"},
    "simulator": set(),  # shares no code with the client or the parser
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "exporter":
            found.update(alias.name for alias in node.names if alias.name != "__version__")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("exporter."))
    return found


def test_every_module_lives_in_a_stage_package():
    loose = {p.name for p in (ROOT / "exporter").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert not loose
    assert {p.name for p in (ROOT / "exporter").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


def test_dependencies_point_down_the_pipeline():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / "exporter" / package).rglob("*.py"):
            for other in imported_packages(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports exporter.{other}")
    assert not wrong


def test_every_module_imports_and_every_package_says_what_it_owns():
    for module in pkgutil.walk_packages(exporter.__path__, "exporter."):
        if module.name == "exporter.__main__":
            continue
        imported = importlib.import_module(module.name)
        if module.ispkg:
            assert imported.__doc__ and len(imported.__doc__) > 80, module.name


def test_the_readme_module_map_lists_every_module():
    readme = (ROOT / "README.md").read_text("utf-8")
    modules = {
        str(p.relative_to(ROOT / "exporter"))
        for p in (ROOT / "exporter").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "simulator" not in p.parts
    }
    missing = {m for m in modules if m.split("/")[-1] not in readme}
    assert not missing
