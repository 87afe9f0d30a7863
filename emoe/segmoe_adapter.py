"""The one module that touches `segmoe`: validate a YAML, build or load a SegMoE pipeline, save a checkpoint.

segmoe 0.0.4 is hazardous by default (CUDA + fp16 defaults, `os.system("wget ...")` for civitai URLs, bare
`except:`, it removes every forward hook of the UNet, gate vectors drawn from the global RNG). Everything here
passes device and dtype explicitly, refuses network sources unless allowed, fixes the seed around the build.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml

SEGMOE_CONFIG_KEY = "segmoe_config"
REQUIRED_KEYS = ("base_model", "num_experts_per_tok", "moe_layers", "type", "experts")
OPTIONAL_KEYS = ("num_experts", "init")
EXPERT_KEYS = ("source_model", "positive_prompt", "negative_prompt")
MOE_LAYER_KINDS = ("attn", "ff", "all")
GATE_SEED = 0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# UNet config fields that must agree between the base and every expert (the MoE swaps layers between them)
_ARCH_FIELDS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "transformer_layers_per_block",
    "norm_num_groups",
)


class EnsembleConfigError(ValueError):
    """A segmoe YAML or checkpoint that cannot be loaded; the message names the field."""


# --------------------------------------------------------------------------------------------------
# 1. validating a segmoe YAML
# ----------------------------------------------------------------------------------------------------


def read_segmoe_yaml(path: str | Path) -> dict[str, Any]:
    """Parse and validate a segmoe YAML (paper appendix E); returns the config as written."""
    path = Path(path)
    if not path.is_file():
        raise EnsembleConfigError(f"ensemble config: file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise EnsembleConfigError(f"ensemble config {path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise EnsembleConfigError(f"ensemble config {path}: expected a mapping at the top level")
    validate_segmoe_config(config, where=str(path))
    return config


def validate_segmoe_config(config: dict[str, Any], *, where: str = "ensemble config") -> None:
    """Raise EnsembleConfigError naming the key for a missing, unknown or malformed key."""
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        allowed = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise EnsembleConfigError(f"{where}: unknown key(s) {unknown} (allowed: {allowed})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise EnsembleConfigError(f"{where}: missing key(s) {missing}")
    if config["type"] == "sdxl":
        raise EnsembleConfigError(
            f"{where}: type: 'sdxl' is not supported yet (only 'sd', Stable Diffusion 1.x)"
        )
    if config["type"] != "sd":
        raise EnsembleConfigError(f"{where}: type: must be 'sd', got {config['type']!r}")
    if config["moe_layers"] not in MOE_LAYER_KINDS:
        raise EnsembleConfigError(
            f"{where}: moe_layers: must be one of {MOE_LAYER_KINDS}, got {config['moe_layers']!r}"
        )
    if not isinstance(config["base_model"], str) or not config["base_model"].strip():
        raise EnsembleConfigError(f"{where}: base_model: must be a non-empty path or hub id")
    experts = config["experts"]
    if not isinstance(experts, list) or len(experts) < 2:
        raise EnsembleConfigError(f"{where}: experts: need a list of at least 2 experts (EMoE needs M >= 2)")
    for i, expert in enumerate(experts):
        if not isinstance(expert, dict):
            raise EnsembleConfigError(f"{where}: experts[{i}]: expected a mapping")
        unknown = sorted(set(expert) - set(EXPERT_KEYS))
        if unknown:
            raise EnsembleConfigError(
                f"{where}: experts[{i}]: unknown key(s) {unknown} (allowed: {list(EXPERT_KEYS)})"
            )
        missing = [k for k in EXPERT_KEYS if k not in expert]
        if missing:
            raise EnsembleConfigError(f"{where}: experts[{i}]: missing key(s) {missing}")
        for key in EXPERT_KEYS:
            if not isinstance(expert[key], str):
                raise EnsembleConfigError(f"{where}: experts[{i}].{key}: must be a string")
    k = config["num_experts_per_tok"]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(experts):
        raise EnsembleConfigError(
            f"{where}: num_experts_per_tok: must be an integer in 1..{len(experts)}, got {k!r}"
        )
    if "num_experts" in config and config["num_experts"] != len(experts):
        raise EnsembleConfigError(
            f"{where}: num_experts: {config['num_experts']!r} != the {len(experts)} experts listed"
        )
    if config.get("init", "hidden") != "hidden":
        raise EnsembleConfigError(
            f"{where}: init: only 'hidden' (gate vectors from expert prompts) is supported"
        )


def _resolve_source(value: str, field: str, base_dir: Path, allow_network: bool) -> str:
    """A local folder/file (relative to the YAML) or, only when the network is allowed, a hub id or URL."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.exists():
        return str(candidate.resolve())
    if value.startswith(("http://", "https://")) or _HUB_ID.match(value):
        if not allow_network:
            raise EnsembleConfigError(
                f"{field}: {value!r} is not a local path and network access is off "
                "(set EMOE_ALLOW_NETWORK=true to let segmoe download hub ids)"
            )
        return value
    raise EnsembleConfigError(f"{field}: path not found: {candidate}")


def _unet_config(source: str) -> dict[str, Any] | None:
    path = Path(source) / "unet" / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_same_architecture(config: dict[str, Any]) -> None:
    base = _unet_config(config["base_model"])
    if base is None:
        return  # single file or hub id: segmoe checks nothing and neither can we without loading it
    for i, expert in enumerate(config["experts"]):
        other = _unet_config(expert["source_model"])
        if other is None:
            continue
        for field in _ARCH_FIELDS:
            if base.get(field) != other.get(field):
                raise EnsembleConfigError(
                    f"experts[{i}].source_model: architecture differs from base_model "
                    f"({field}: {other.get(field)!r} vs {base.get(field)!r}); experts must fine-tune one base"
                )


# --------------------------------------------------------------------------------------------------
# 2. building and loading through segmoe
# ----------------------------------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # segmoe draws gate vectors from pipelines run on the global RNG: fix it, and restore it afterwards
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_from_yaml(
    path: str | Path, *, device: str, dtype: torch.dtype, allow_network: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Build a SegMoE pipeline from a YAML; returns (SD pipeline with SparseMoeBlocks, segmoe config)."""
    path = Path(path)
    config = read_segmoe_yaml(path)
    base_dir = path.resolve().parent
    config["base_model"] = _resolve_source(config["base_model"], "base_model", base_dir, allow_network)
    for i, expert in enumerate(config["experts"]):
        expert["source_model"] = _resolve_source(
            expert["source_model"], f"experts[{i}].source_model", base_dir, allow_network
        )
    _check_same_architecture(config)
    from segmoe import SegMoEPipeline

    kwargs: dict[str, Any] = {} if allow_network else {"local_files_only": True}
    with tempfile.TemporaryDirectory(prefix="emoe-segmoe-") as tmp:
        resolved = Path(tmp) / "config.yaml"
        resolved.write_text(yaml.safe_dump(config), encoding="utf-8")
        with _seeded(GATE_SEED), _muted():
            segmoe = SegMoEPipeline(
                str(resolved), device=device, torch_dtype=dtype, variant=None, use_safetensors=True, **kwargs
            )
    _quiet(segmoe.pipe)
    return segmoe.pipe, dict(segmoe.config)


def is_checkpoint(folder: str | Path) -> bool:
    """True for a folder holding a saved merged SegMoE checkpoint."""
    unet_config = _unet_config(str(folder))
    return unet_config is not None and SEGMOE_CONFIG_KEY in unet_config


def load_checkpoint(folder: str | Path, *, device: str, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """Load a merged SegMoE checkpoint (segmoe's own format) without instantiating the source pipelines."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EnsembleConfigError(f"ensemble: path not found: {folder}")
    unet_config = _unet_config(str(folder))
    if unet_config is None:
        raise EnsembleConfigError(f"ensemble {folder}: not a SegMoE checkpoint (no unet/config.json)")
    seg_config = unet_config.get(SEGMOE_CONFIG_KEY)
    if not isinstance(seg_config, dict):
        raise EnsembleConfigError(f"ensemble {folder}: unet/config.json has no {SEGMOE_CONFIG_KEY!r}")
    if seg_config.get("type", "sdxl") != "sd":
        raise EnsembleConfigError(
            f"ensemble {folder}: type: {seg_config.get('type')!r} is not supported (only 'sd')"
        )
    if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise EnsembleConfigError(f"ensemble {folder}: unet/diffusion_pytorch_model.safetensors is missing")
    from segmoe import SegMoEPipeline

    with _muted():
        segmoe = SegMoEPipeline(
            str(folder), device=device, torch_dtype=dtype, variant=None, local_files_only=True
        )
    _quiet(segmoe.pipe)
    return segmoe.pipe, dict(segmoe.config)


def empty_moe_unet(folder: str | Path) -> Any:
    """segmoe's randomly initialised MoE UNet for `folder/unet/config.json` (holding a segmoe_config)."""
    from segmoe import SegMoEPipeline

    segmoe = SegMoEPipeline.__new__(SegMoEPipeline)  # skip __init__: it would load weights
    with _muted():
        return segmoe.create_empty(str(folder))


def sparse_moe_block_type() -> type:
    """segmoe's SparseMoeBlock class (for finding the blocks to replace)."""
    from segmoe.main import SparseMoeBlock

    return SparseMoeBlock


def _quiet(pipe: Any) -> None:
    pipe.set_progress_bar_config(disable=True)


@contextmanager
def _muted() -> Iterator[None]:
    """Silence diffusers/transformers chatter and segmoe's progress bars (stderr) while segmoe runs."""
    import diffusers
    import transformers

    levels = (diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity())
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        with redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # segmoe passes diffusers' deprecated torch_dtype
            yield
    finally:
        diffusers.utils.logging.set_verbosity(levels[0])
        transformers.utils.logging.set_verbosity(levels[1])
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------
# 3. saving in segmoe's checkpoint format
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(
    pipe: Any, segmoe_config: dict[str, Any], folder: str | Path, *, fp16: bool = False
) -> None:
    """Write pipe as a merged SegMoE checkpoint that `SegMoEPipeline(folder)` loads (fp16 optional)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.unet.register_to_config(**{SEGMOE_CONFIG_KEY: segmoe_config})
    with _muted():
        pipe.save_pretrained(folder, safe_serialization=True)
    # segmoe reloads the UNet from this exact file with a strict load_state_dict
    unet_state = {k: v.detach().contiguous().cpu() for k, v in pipe.unet.state_dict().items()}
    safetensors.torch.save_file(unet_state, folder / "unet" / "diffusion_pytorch_model.safetensors")
    if fp16:
        for file in folder.rglob("*.safetensors"):
            tensors = safetensors.torch.load_file(file)
            halved = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            safetensors.torch.save_file(halved, file)
