"""Each folder's one-line rule (design.md): import each package with its forbidden modules blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must not import (directly or through anything it imports)
RULES: dict[str, list[str]] = {
    "emoe": [
        "reference",
        "gateway",
        "cli",
        "workers",
        "audit",
        "policies",
        "sqlalchemy",
        "fastapi",
        "celery",
    ],
    "reference": ["gateway", "cli", "workers", "audit", "policies", "sqlalchemy", "fastapi", "celery"],
    "policies": [
        "torch",
        "sqlalchemy",
        "fastapi",
        "httpx",
        "emoe",
        "reference",
        "audit",
        "gateway",
        "cli",
        "workers",
    ],
    "audit": ["torch", "fastapi", "emoe", "reference", "gateway", "cli", "workers"],
    "workers": ["fastapi", "gateway", "cli", "reference"],
    "gateway": ["torch", "cli", "reference"],  # HTTP only; the command line is its own package
    "cli": ["torch"],  # at import time: the Celery main process must never load torch (README, real mode)
    # the client and the in-process gate's module: httpx and the pure policies; emoe loads on first use
    "emoe_gate": ["torch", "sqlalchemy", "fastapi", "celery", "gateway", "cli", "workers", "audit"],
}

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    blocked = set(sys.argv[2].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"forbidden import of {name!r}")
            return None

    sys.meta_path.insert(0, Block())
    pkg = importlib.import_module(sys.argv[1])
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
    """
)


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_nothing_forbidden(package: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, package, ",".join(RULES[package])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_readme_layout_table_lists_every_top_level_folder() -> None:
    """README's layout table names exactly the folders the repository holds at its top level."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/")[0] for path in tracked if "/" in path and not path.startswith(".")}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout") :].split("\n## ")[0]
    listed = {line.split("`")[1].rstrip("/") for line in table.splitlines() if line.startswith("| `")}
    assert listed == folders
