"""Merging the trained models into one SegMoE checkpoint and shipping it with a manifest of sha256 hashes.

The merge goes through the EMoE core's loader (`emoe.load_ensemble(segmoe.yaml)`, which builds the SegMoE with
segmoe and fixed gate seeds) and its `save_ensemble` (segmoe's checkpoint format, fp16 safetensors), so what
is shipped is exactly what `emoe.load_ensemble("default")` reads back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from emoe.ensemble import REFERENCE_DIR as ENSEMBLE_DIR

MANIFEST_FILE = "manifest.json"
CLIP_SUBDIR = "clip"
MAX_SHIPPED_BYTES = 25 * 1024 * 1024

#: the reference ensemble's default scoring configuration, chosen by `eval ablation` and written into the
#: shipped emoe.json (so it is part of the scoring fingerprint); docs/reference-results.md says why
REFERENCE_SCORE_CONFIG: dict[str, Any] = {
    "batch_size": 8,
    "experts": None,
    "guidance": 7.5,
    "height": 32,
    "latent": "eps",
    "negative_prompt": "",
    "scheduler": "ddpm",
    "seed": 0,
    "split": "all",
    "steps": 25,
    "width": 32,
}
REFERENCE_SCORE_REASON = (
    "chosen by eval ablation: whole expert paths, noise-prediction variance (docs/reference-results.md)"
)
REFERENCE_DESCRIPTION = (
    "Reference ensemble: 4 experts fine-tuned from one base on web-like samples of a captioned shapes world "
    "(32x32), trained on CPU from seeds"
)


def reference_description() -> str:
    """The shipped emoe.json's description: what the ensemble is, and the scoring phrase of its default."""
    from emoe.config import ScoreConfig, describe_scoring

    default = ScoreConfig.from_dict(REFERENCE_SCORE_CONFIG)
    return f"{REFERENCE_DESCRIPTION}; default {describe_scoring(default)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_files(folder: Path) -> list[Path]:
    """Every file of a shipped ensemble folder except the manifest itself, sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE and "__pycache__" not in p.parts
    )


def write_manifest(folder: Path) -> dict[str, Any]:
    """Write manifest.json: sha256 and size of every file, relative to the folder."""
    files = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in shipped_files(folder)
    }
    manifest = {"files": files, "total_bytes": sum(f["bytes"] for f in files.values())}
    (folder / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def verify_manifest(folder: Path = ENSEMBLE_DIR) -> list[str]:
    """Problems found comparing a shipped folder with its manifest ([] when every file matches)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return [f"{path}: manifest missing"]
    listed = json.loads(path.read_text(encoding="utf-8"))["files"]
    problems = []
    present = {p.relative_to(folder).as_posix(): p for p in shipped_files(folder)}
    for name, entry in sorted(listed.items()):
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
        elif sha256_file(present[name]) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    problems += [f"{name}: present but not in the manifest" for name in sorted(set(present) - set(listed))]
    return problems


def _relative_sources(dest: Path, build_dir: Path) -> None:
    root = str(build_dir.resolve())
    for path in dest.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        relative = text.replace(root + "/", "").replace(f'"{root}"', '"."')
        if relative != text:
            path.write_text(relative, encoding="utf-8")


def ship(
    build_dir: Path, dest: Path = ENSEMBLE_DIR, *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge build_dir/segmoe.yaml into a fp16 SegMoE checkpoint at dest, add the CLIP, write the manifest."""
    from transformers import CLIPModel

    from emoe import load_ensemble, save_ensemble

    build_dir, dest = Path(build_dir), Path(dest)
    # 1. build the SegMoE through the core's loader (fp32 on CPU), then save it fp16
    ensemble = load_ensemble(build_dir / "segmoe.yaml", device="cpu", dtype="float32")
    if dest.exists():
        shutil.rmtree(dest)
    info = {
        "name": "reference",
        "description": reference_description(),
        "score_config": REFERENCE_SCORE_CONFIG,
        "score_config_reason": REFERENCE_SCORE_REASON,
        **(extra or {}),
    }
    save_ensemble(ensemble, dest, fp16=True, extra=info)
    # 2. the CLIP that gives the CLIP score, also fp16
    clip = CLIPModel.from_pretrained(build_dir / CLIP_SUBDIR, dtype=torch.float32)
    clip.half().save_pretrained(dest / CLIP_SUBDIR, safe_serialization=True)
    # 3. configs name their sources relative to the build folder (diffusers and segmoe record absolute paths,
    #    which would tie the shipped files to the machine that built them; loading does not read them)
    _relative_sources(dest, build_dir)
    # 4. the manifest of hashes
    manifest = write_manifest(dest)
    if manifest["total_bytes"] > MAX_SHIPPED_BYTES:
        raise RuntimeError(f"shipped ensemble is {manifest['total_bytes']} bytes, over {MAX_SHIPPED_BYTES}")
    return manifest
