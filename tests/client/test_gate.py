"""The in-process gate (`emoe_gate.gate`) on the shipped reference ensemble and the bundled policy: scores and
decisions as the service makes them, diffusers' `callback_on_step_end` halting at the first step, the optional
audit log."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from tests.client.conftest import ACCEPTED, FLAGGED, HALTED

pytestmark = pytest.mark.slow
OTHER_HALTED = "iso sininen neliö keskellä"


@pytest.fixture(scope="module")
def gate():
    from emoe_gate.gate import load_gate

    return load_gate()


def test_scores_and_decisions_match_the_core_and_policy(gate) -> None:
    from emoe import default_score_config, score
    from policies import DecisionContext, bundled_policy_path, decide, load_policy

    results = gate([ACCEPTED, FLAGGED, HALTED])
    assert [r.action for r in results] == ["continue", "flag", "halt"]
    assert [r.language for r in results] == ["en", "es", "fi"]
    assert results[2].halted and results[1].flagged and not results[0].halted
    policy = load_policy(bundled_policy_path())
    assert gate.policy.hash == policy.hash
    alone = score([HALTED], default_score_config(gate.ensemble), gate.ensemble)[0]
    assert results[2].score.score == alone.score  # a batch scores exactly as each prompt alone
    assert results[2].decision == decide(alone, DecisionContext(language="fi"), policy)
    decomposed = gate(unicodedata.normalize("NFD", HALTED))[0]  # "ä" as a + combining diaeresis
    assert decomposed.prompt == HALTED and decomposed.score.score == alone.score


def test_callback_halts_the_pipeline_after_its_first_step(gate) -> None:
    import numpy as np

    pipe = gate.ensemble.pipe  # a diffusers StableDiffusionPipeline
    images = {}
    for prompt, halted in ((HALTED, True), (OTHER_HALTED, True), (ACCEPTED, False)):
        halt = gate.callback(prompt)
        seen: list[int] = []

        def counting(pipeline, step, timestep, kwargs, halt=halt, seen=seen):
            seen.append(step)
            return halt(pipeline, step, timestep, kwargs)

        out = pipe(prompt, num_inference_steps=4, callback_on_step_end=counting, output_type="np")
        assert halt.halted is halted and halt.results[0].halted is halted
        assert seen == ([0] if halted else [0, 1, 2, 3])
        images[prompt] = out.images
    # halted: the latents were zeroed, so the image is the same blank for any prompt, never a rendering
    assert np.array_equal(images[HALTED], images[OTHER_HALTED])
    assert not np.array_equal(images[HALTED], images[ACCEPTED])


def test_audit_log_is_optional_and_chained(gate, tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from audit.chain import verify_chain
    from audit.db import session_scope
    from audit.models import Decision, Job
    from emoe_gate.gate import Gate, SqlAuditLog

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    logged = Gate(gate.ensemble, gate.policy, audit=SqlAuditLog(url, tenant="pipeline"))
    logged([ACCEPTED, HALTED], labels={"region": "eu"})
    with session_scope(url) as session:
        rows = session.execute(select(Decision.action, Decision.language).order_by(Decision.id)).all()
        assert [tuple(r) for r in rows] == [("continue", "en"), ("halt", "fi")]
        jobs = session.scalars(select(Job)).all()
        assert {j.tenant for j in jobs} == {"pipeline"} and {j.mode for j in jobs} == {"score_only"}
        assert all(j.labels == {"region": "eu"} for j in jobs)
        assert verify_chain(session).ok
        assert session.scalar(select(func.count()).select_from(Decision)) == 2
    assert gate.audit is None  # the default gate records nothing


def test_refuses_a_policy_calibrated_for_another_configuration(gate) -> None:
    from emoe_gate.gate import Gate
    from policies import parse_policy

    other = parse_policy(
        {"name": "other", "version": "1", "fingerprint": "0" * 64, "flag_at": 1, "halt_at": 2}
    )
    with pytest.raises(ValueError, match="calibrated for scoring fingerprint"):
        Gate(gate.ensemble, other)
