"""Fixtures of the EMoE core tests: the tiny seeded random ensemble (built once, cached in .pytest_cache)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_folder(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny merged checkpoint; built through segmoe from a YAML the first time (~30 s), then reused."""
    from emoe.tiny import tiny_checkpoint

    # Without the cache plugin (`-p no:cacheprovider`) build it once per session instead.
    cache = getattr(pytestconfig, "cache", None)
    root = Path(cache.mkdir("emoe-tiny")) if cache is not None else tmp_path_factory.mktemp("emoe-tiny")
    return tiny_checkpoint(root)


@pytest.fixture(scope="session")
def tiny(tiny_folder: Path):
    """The tiny ensemble, loaded once per session: tests must not change its weights (use `fresh_tiny`)."""

    from emoe import load_ensemble

    return load_ensemble(tiny_folder)


@pytest.fixture
def fresh_tiny(tiny_folder: Path):
    """A private copy of the tiny ensemble that a test may modify."""
    from emoe import load_ensemble

    return load_ensemble(tiny_folder)


def make_experts_identical(ensemble, layers: Iterable[str] | None = None) -> None:
    """Copy expert 0's weights into every other expert, at `layers` (MoE layer names) or everywhere."""
    import torch

    wanted = set(layers) if layers is not None else set(ensemble.moe_layers)
    with torch.no_grad():
        for name, module in ensemble.moe_layers.items():
            if name in wanted:
                for expert in module.experts[1:]:
                    expert.load_state_dict(module.experts[0].state_dict())
