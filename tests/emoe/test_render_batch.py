"""Render batching across requests: each request's image is bit-identical to the one it gets alone.

What makes that hold on CPU: per-request generators and routing groups (emoe/generation.py, emoe/routing.py),
prompts encoded and images decoded one request at a time, the time embedding multiplied in row pairs and
every other product of the UNet given at least 16 rows (emoe/unet_passes.py: MKL picks its GEMM kernel, and
so the order of a row's sum, by the row count below that).
"""

from __future__ import annotations

import io

import pytest
import torch

from emoe import GenerationCancelled, default_score_config, generate, load_ensemble
from emoe.generation import batch_key, batches_exactly, generate_batch

PROMPTS = [
    "a small red circle on the left",
    "a big blue square in the middle",
    "un círculo rojo sobre un fondo blanco",
    "een kleine gele ster rechts",
]
NEGATIVES = ["", "blurry", "", "text, watermark"]


@pytest.fixture(scope="module")
def reference():
    return load_ensemble("default")


@pytest.fixture(params=["tiny", "default"])
def ensemble(request, tiny, reference):
    return tiny if request.param == "tiny" else reference


def configs(ensemble, steps: int = 6):
    base = default_score_config(ensemble).replace(steps=steps)
    return [base.replace(seed=10 + i, negative_prompt=NEGATIVES[i]) for i in range(len(PROMPTS))]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_identical(batched, alone, what: str) -> None:
    assert not isinstance(batched, Exception), f"{what}: {batched!r}"
    assert torch.equal(batched.latents, alone.latents), what
    assert [png(i) for i in batched.images] == [png(i) for i in alone.images], what
    assert batched.score.score == alone.score.score and batched.score.fingerprint == alone.score.fingerprint


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_each_request_in_a_batch_is_bit_identical_to_it_alone(ensemble, mode) -> None:
    cfgs = configs(ensemble)
    alone = [generate(p, c, ensemble, mode=mode) for p, c in zip(PROMPTS, cfgs, strict=True)]
    assert len({png(a.images[0]) for a in alone}) == len(PROMPTS)  # four different pictures
    together = generate_batch(list(zip(PROMPTS, cfgs, strict=True)), ensemble, mode=mode)
    pair = generate_batch([(PROMPTS[3], cfgs[3]), (PROMPTS[1], cfgs[1])], ensemble, mode=mode)
    for i in range(len(PROMPTS)):
        assert_identical(together[i], alone[i], f"request {i} in a batch of 4 ({mode})")
    assert_identical(pair[0], alone[3], f"request 3 first in a batch of 2 ({mode})")
    assert_identical(pair[1], alone[1], f"request 1 second in a batch of 2 ({mode})")
    assert len(together[0].images) == (1 if mode == "fast" else ensemble.num_experts)


def test_without_guidance_a_batch_is_still_each_request_as_alone(tiny) -> None:
    """guidance <= 1: a trajectory is one row, and oneDNN convolves a lone row differently from the same row
    among others (measured: batch 1 against 2 or more), so such requests run one at a time."""
    cfgs = [c.replace(guidance=1.0) for c in configs(tiny)]
    assert not batches_exactly(cfgs[0]) and batches_exactly(configs(tiny)[0])
    alone = [generate(p, c, tiny) for p, c in zip(PROMPTS, cfgs, strict=True)]
    for i, result in enumerate(generate_batch(list(zip(PROMPTS, cfgs, strict=True)), tiny)):
        assert_identical(result, alone[i], f"request {i} without guidance")


def test_one_request_stopping_or_halted_leaves_the_others_as_alone(tiny) -> None:
    cfgs = configs(tiny)
    alone = [generate(p, c, tiny) for p, c in zip(PROMPTS, cfgs, strict=True)]
    asked = []

    def stop_before_the_third_step() -> bool:
        asked.append(1)
        return len(asked) == 2

    results = generate_batch(
        list(zip(PROMPTS, cfgs, strict=True)),
        tiny,
        decide=lambda score: score.prompt != PROMPTS[2],
        should_stop=[None, stop_before_the_third_step, None, lambda: False],
    )
    assert isinstance(results[1], GenerationCancelled) and len(asked) == 2
    assert results[2].halted and results[2].images == []
    assert_identical(results[0], alone[0], "request 0")
    assert_identical(results[3], alone[3], "request 3")


def test_a_request_that_cannot_be_generated_does_not_fail_its_neighbours(tiny) -> None:
    cfgs = configs(tiny)
    results = generate_batch([(PROMPTS[0], cfgs[0]), ("   ", cfgs[1])], tiny)
    assert isinstance(results[1], ValueError) and str(results[1]).startswith("prompts[0]:")
    assert_identical(results[0], generate(PROMPTS[0], cfgs[0], tiny), "request 0")


def test_only_requests_with_one_batch_key_share_a_batch(tiny) -> None:
    a, b = configs(tiny)[:2]
    assert batch_key(a) == batch_key(b)  # seeds and negative prompts may differ
    other = a.replace(steps=7)
    assert batch_key(other) != batch_key(a)
    with pytest.raises(ValueError, match=r"^requests:"):
        generate_batch([(PROMPTS[0], a), (PROMPTS[1], other)], tiny)


@pytest.mark.parametrize(("scheduler", "guidance"), [(None, None), ("euler_a", None), ("dpm", 1.0)])
def test_a_render_without_the_gate_paths_gives_the_images_of_fast_emoe(ensemble, scheduler, guidance) -> None:
    """gate=False (the worker's render stage: the gate decided already) drops the M gate paths from the first
    step; the ordinary path's numbers do not depend on what else is in the batch, so the images are Fast
    EMoE's, bit for bit, alone and in a batch. Without guidance (a trajectory is one row) it keeps them."""
    changes = {k: v for k, v in (("scheduler", scheduler), ("guidance", guidance)) if v is not None}
    cfgs = [c.replace(**changes) for c in configs(ensemble)]
    gated = [generate(p, c, ensemble, mode="fast") for p, c in zip(PROMPTS, cfgs, strict=True)]
    alone = [generate(p, c, ensemble, gate=False) for p, c in zip(PROMPTS[:2], cfgs[:2], strict=True)]
    together = generate_batch(list(zip(PROMPTS, cfgs, strict=True)), ensemble, gate=False)
    for i, (result, want) in enumerate(zip(alone + together, gated[:2] + gated, strict=True)):
        assert (result.score is None) == batches_exactly(cfgs[0]) and not result.halted
        assert torch.equal(result.latents, want.latents), f"result {i} ({scheduler})"
        assert [png(x) for x in result.images] == [png(x) for x in want.images], f"result {i} ({scheduler})"
    batched, timings = batches_exactly(cfgs[0]), together[0].timings_ms
    assert timings.get("render_batch_size", 1) == (4 if batched else 1) and ("gate_ms" in timings) != batched


def test_a_render_without_the_gate_is_fast_mode_and_undecided(tiny) -> None:
    config = configs(tiny)[0]
    with pytest.raises(ValueError, match=r"^gate:"):
        generate(PROMPTS[0], config, tiny, mode="full", gate=False)
    with pytest.raises(ValueError, match=r"^gate:"):
        generate(PROMPTS[0], config, tiny, decide=lambda score: True, gate=False)
