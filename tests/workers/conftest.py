"""Worker fixtures: the tiny ensemble loaded once per session, and a policy for it that halts some prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DEMO = json.loads((Path(__file__).resolve().parents[2] / "cli" / "demo_prompts.json").read_text())["prompts"]
PROMPTS: list[str] = [row["prompt"] for row in DEMO[:20]]


@pytest.fixture(scope="session")
def tiny_runtime() -> Any:
    """The tiny ensemble and a policy calibrated on PROMPTS' scores: flag above the 40th, halt above the 75th
    percentile, so a run over PROMPTS has halted, flagged and continued jobs."""
    import numpy as np

    from emoe import default_score_config, load_ensemble, score
    from policies import parse_policy
    from workers.runtime import Runtime

    ensemble = load_ensemble("tiny")
    config = default_score_config(ensemble)
    scores = score(PROMPTS, config, ensemble)
    values = np.array([s.score for s in scores])
    policy = parse_policy(
        {
            "name": "test-tiny",
            "version": "1",
            "fingerprint": scores[0].fingerprint,
            "flag_at": float(np.quantile(values, 0.40)),
            "halt_at": float(np.quantile(values, 0.75)),
        }
    )
    runtime = Runtime(ensemble=ensemble, policy=policy, gate_config=config)
    runtime.expected = {p: s.score for p, s in zip(PROMPTS, scores, strict=True)}  # type: ignore[attr-defined]
    return runtime


@pytest.fixture(scope="session")
def tiny_policy_file(tiny_runtime: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same policy as a file (for worker subprocesses: EMOE_POLICY_PATH)."""
    from policies import dump_policy

    path = tmp_path_factory.mktemp("policy") / "test-tiny.yaml"
    path.write_text(dump_policy(tiny_runtime.policy))
    return path
