"""Which ensemble a spec names: "tiny" (built in code), "default" (the shipped reference ensemble), a segmoe
YAML, or a saved merged SegMoE checkpoint folder. The one module that knows both `ensemble` and `tiny`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from emoe import ensemble, tiny
from emoe.ensemble import RANDOM_NOTICE, Ensemble, load_checkpoint, load_yaml, resolve_dtype
from emoe.segmoe_adapter import EnsembleConfigError, is_checkpoint

log = logging.getLogger(__name__)


def load_ensemble(spec: str | Path, *, device: str = "cpu", dtype: str | torch.dtype = "float32") -> Ensemble:
    """Load "tiny", "default", a segmoe YAML path or a saved merged SegMoE checkpoint folder."""
    torch_dtype = resolve_dtype(dtype)
    if str(spec) == "tiny":
        return load_checkpoint(tiny.tiny_checkpoint(), device=device, dtype=torch_dtype)
    if str(spec) == "default":
        reference = ensemble.REFERENCE_DIR  # read at call time: tests point it elsewhere
        if is_checkpoint(reference):
            return load_checkpoint(reference, device=device, dtype=torch_dtype)
        log.warning(
            "NOTICE: no reference ensemble at %s; using the tiny seeded random ensemble instead (%s)",
            reference,
            RANDOM_NOTICE,
        )
        return load_ensemble("tiny", device=device, dtype=torch_dtype)
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return load_yaml(path, device=device, dtype=torch_dtype)
    if not path.exists():
        raise EnsembleConfigError(
            f"ensemble: path not found: {path} (expected tiny, default, a segmoe YAML or a checkpoint folder)"
        )
    return load_checkpoint(path, device=device, dtype=torch_dtype)
