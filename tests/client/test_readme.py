"""The README's three embedding examples run as written: the client and the OpenAI-compatible call against a
real `emoe-gate serve`, the in-process gate offline on the reference ensemble."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import Server
from tests.e2e.conftest import user_environment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
README = Path(__file__).resolve().parents[2] / "README.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def examples() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Embedding", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run(code: str, folder: Path, server: Server | None) -> str:
    env = user_environment(folder)
    if server is not None:
        env.update(GATE_URL=server.url, GATE_KEY=server.key)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_there_are_three_examples() -> None:
    blocks = examples()
    assert len(blocks) == 3
    assert "from emoe_gate import Client" in blocks[0] and "from openai import" in blocks[1]
    assert "from emoe_gate.gate import load_gate" in blocks[2]


def test_client_example(server: Server, tmp_path: Path) -> None:
    out = run(examples()[0], tmp_path, server)
    assert out.splitlines()[0].startswith("completed continue 0.001")
    assert "refused: steps" in out
    assert (tmp_path / "circle.png").read_bytes().startswith(PNG_MAGIC)


def test_openai_example(server: Server, tmp_path: Path) -> None:
    out = run(examples()[1], tmp_path, server)
    assert out.startswith("content_policy_violation 0.00") and "default@" in out
    assert (tmp_path / "circle.png").read_bytes().startswith(PNG_MAGIC)


def test_in_process_example(tmp_path: Path) -> None:
    lines = run(examples()[2], tmp_path, None).splitlines()
    assert lines[0].startswith("continue ") and lines[0].endswith("en a small red circle on the left")
    assert lines[1].startswith("halt ") and lines[1].endswith("fi pieni punainen ympyrä vasemmalla")
    assert lines[2].startswith("halted after the first step: True score ")
