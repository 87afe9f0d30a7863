"""The real CLIP tokenizer, built offline from the BPE vocabulary in the `open-clip-torch` wheel."""

from __future__ import annotations

import gzip
import importlib.util
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

MODEL_MAX_LENGTH = 77
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES_USED = 49152 - 256 - 2  # open_clip's SimpleTokenizer keeps this many merges


def _bpe_path() -> Path:
    # find_spec only locates the package: importing open_clip pulls in torchvision, which is broken here
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open-clip-torch is not installed: its BPE vocabulary builds the CLIP tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE
    if not path.is_file():
        raise RuntimeError(f"CLIP vocabulary not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGES_USED + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges  # type: ignore[return-value]


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """The CLIP ViT-L/14 tokenizer (SD 1.x), 77 tokens; built from vocab + merges, saved, reloaded."""
    vocab, merges = _vocab_and_merges()
    built = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
    # a tokenizer built in memory and one loaded from disk can differ: ship the reloaded one
    with tempfile.TemporaryDirectory(prefix="emoe-clip-tok-") as tmp:
        built.save_pretrained(tmp)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MODEL_MAX_LENGTH)
