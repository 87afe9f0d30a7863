"""EMoE core: load a SegMoE ensemble, score prompts at the first denoising step, generate (Fast/full EMoE).

Importing `emoe` is cheap; torch, diffusers and segmoe load on first use of a public name.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoe.config import ScoreConfig as ScoreConfig
    from emoe.config import default_score_config as default_score_config
    from emoe.ensemble import Ensemble as Ensemble
    from emoe.ensemble import save_ensemble as save_ensemble
    from emoe.generation import Generation as Generation
    from emoe.generation import generate as generate
    from emoe.generation import generate_batch as generate_batch
    from emoe.pipeline import GenerationCancelled as GenerationCancelled
    from emoe.scoring import Score as Score
    from emoe.scoring import score as score
    from emoe.scoring import scoring_fingerprint as scoring_fingerprint
    from emoe.segmoe_adapter import EnsembleConfigError as EnsembleConfigError
    from emoe.specs import load_ensemble as load_ensemble

_EXPORTS = {
    "ScoreConfig": "emoe.config",
    "default_score_config": "emoe.config",
    "Ensemble": "emoe.ensemble",
    "load_ensemble": "emoe.specs",
    "save_ensemble": "emoe.ensemble",
    "Generation": "emoe.generation",
    "GenerationCancelled": "emoe.pipeline",
    "generate": "emoe.generation",
    "generate_batch": "emoe.generation",
    "Score": "emoe.scoring",
    "score": "emoe.scoring",
    "scoring_fingerprint": "emoe.scoring",
    "EnsembleConfigError": "emoe.segmoe_adapter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emoe' has no attribute {name!r}")
