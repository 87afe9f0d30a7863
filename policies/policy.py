"""Policy files: versioned YAML documents of score thresholds, validated on load, identified by content hash.

```yaml
name: default
version: "1"
fingerprint: 3f2a...            # sha256 of the scoring configuration the thresholds were calibrated for
mode: enforce                   # or shadow: record what would happen, always continue
flag_at: 1.25                   # scores strictly above flag_at are flagged
halt_at: 2.5                    # scores strictly above halt_at are halted (halt_at >= flag_at)
languages:                      # optional per-language overrides (either threshold or both)
  de: {flag_at: 1.4, halt_at: 2.8}
on_flag: hold                   # optional: hold a flagged job's images for human review (default release)
on_halt: review                 # optional: a reviewer may approve (render) a halted job (default final)
calibration: {...}              # optional, machine-readable record of how the thresholds were set
notes: free text
```
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

MODES = ("enforce", "shadow")
ON_FLAG = ("release", "hold")  # the first is the default (what a policy without the key does)
ON_HALT = ("final", "review")
TOP_LEVEL_KEYS = (
    "name",
    "version",
    "fingerprint",
    "mode",
    "flag_at",
    "halt_at",
    "languages",
    "on_flag",
    "on_halt",
    "calibration",
    "notes",
)
REQUIRED_KEYS = ("name", "version", "fingerprint", "flag_at", "halt_at")
OVERRIDE_KEYS = ("flag_at", "halt_at")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PolicyError(ValueError):
    """An invalid policy; the message names the offending key."""


@dataclass(frozen=True)
class Thresholds:
    flag_at: float
    halt_at: float


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build it with `parse_policy` or `load_policy`, not directly."""

    name: str
    version: str
    fingerprint: str
    flag_at: float
    halt_at: float
    mode: str = "enforce"
    languages: Mapping[str, Thresholds] = field(default_factory=dict)
    on_flag: str = ON_FLAG[0]
    on_halt: str = ON_HALT[0]
    calibration: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The canonical document (what `hash` covers and what `dump_policy` writes)."""
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "mode": self.mode,
            "flag_at": self.flag_at,
            "halt_at": self.halt_at,
        }
        if self.languages:
            data["languages"] = {
                lang: {"flag_at": t.flag_at, "halt_at": t.halt_at}
                for lang, t in sorted(self.languages.items())
            }
        # written only when not the default, so that a policy without them keeps its hash
        if self.on_flag != ON_FLAG[0]:
            data["on_flag"] = self.on_flag
        if self.on_halt != ON_HALT[0]:
            data["on_halt"] = self.on_halt
        if self.calibration:
            data["calibration"] = dict(self.calibration)
        if self.notes:
            data["notes"] = self.notes
        return data

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical content (sorted-key JSON, floats via repr)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def id(self) -> str:
        """The identity shown in logs and audit rows: `name@version#hash12`."""
        return f"{self.name}@{self.version}#{self.hash[:12]}"

    def thresholds_for(self, language: str | None) -> tuple[Thresholds, str | None]:
        """The thresholds for `language`, and the override that supplied them (None: the defaults)."""
        if language:
            lang = language.strip().lower().replace("_", "-")
            for key in (lang, lang.split("-")[0]):
                if key in self.languages:
                    return self.languages[key], key
        return Thresholds(self.flag_at, self.halt_at), None


def _finite_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{key}: must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise PolicyError(f"{key}: must be a finite number, got {value!r}")
    return number


def _text(value: Any, key: str, pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PolicyError(f"{key}: must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise PolicyError(f"{key}: must not be empty")
    if pattern is not None and not pattern.fullmatch(text):
        raise PolicyError(f"{key}: {text!r} is not valid ({hint})")
    return text


def _check_order(flag_at: float, halt_at: float, where: str) -> None:
    if halt_at < flag_at:
        raise PolicyError(
            f"{where}halt_at: {halt_at!r} is below {where}flag_at {flag_at!r} (halt_at must be >= flag_at)"
        )


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise PolicyError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _json_safe(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise PolicyError(f"{key}: must be a finite number, got {value!r}")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # dates and the like, as YAML parsed them


def parse_policy(data: Mapping[str, Any] | str) -> Policy:
    """Validate a policy document (a mapping or YAML text); raise `PolicyError` naming the key."""
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise PolicyError(f"policy: must be a mapping of keys to values, got {type(data).__name__}")

    unknown = sorted(str(k) for k in data if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise PolicyError(f"{unknown[0]}: unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    for key in REQUIRED_KEYS:
        if data.get(key) is None:
            raise PolicyError(f"{key}: missing (required: {', '.join(REQUIRED_KEYS)})")

    name = _text(data["name"], "name", _NAME, "letters, digits, '.', '_' or '-', at most 128")
    version = _text(data["version"], "version")
    if len(version) > 64:
        raise PolicyError("version: longer than 64 characters")
    fingerprint = _text(
        data["fingerprint"], "fingerprint", _FINGERPRINT, "64 lower-case hex digits (a sha256)"
    )
    mode = data.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    flag_at = _finite_number(data["flag_at"], "flag_at")
    halt_at = _finite_number(data["halt_at"], "halt_at")
    _check_order(flag_at, halt_at, "")

    languages: dict[str, Thresholds] = {}
    raw_languages = data.get("languages") or {}
    if not isinstance(raw_languages, Mapping):
        raise PolicyError("languages: must be a mapping of language code to {flag_at, halt_at}")
    for raw_lang, override in raw_languages.items():
        if isinstance(raw_lang, bool):  # YAML 1.1 reads a bare `no:` (Norwegian) as false
            raise PolicyError(
                f"languages: key {raw_lang!r} is not a language code (quote codes such as 'no')"
            )
        lang = _text(str(raw_lang).lower(), "languages", _LANGUAGE, "a language code such as 'de' or 'pt-br'")
        where = f"languages.{lang}."
        if not isinstance(override, Mapping) or not override:
            raise PolicyError(f"languages.{lang}: must be a mapping with flag_at and/or halt_at")
        bad = sorted(str(k) for k in override if k not in OVERRIDE_KEYS)
        if bad:
            raise PolicyError(f"{where}{bad[0]}: unknown key (allowed: flag_at, halt_at)")
        lang_flag = (
            _finite_number(override["flag_at"], where + "flag_at") if "flag_at" in override else flag_at
        )
        lang_halt = (
            _finite_number(override["halt_at"], where + "halt_at") if "halt_at" in override else halt_at
        )
        _check_order(lang_flag, lang_halt, where)
        languages[lang] = Thresholds(lang_flag, lang_halt)

    on_flag = _choice(data.get("on_flag", ON_FLAG[0]), "on_flag", ON_FLAG)
    on_halt = _choice(data.get("on_halt", ON_HALT[0]), "on_halt", ON_HALT)
    calibration = data.get("calibration") or {}
    if not isinstance(calibration, Mapping):
        raise PolicyError("calibration: must be a mapping")
    notes = data.get("notes") or ""
    if not isinstance(notes, str):
        raise PolicyError(f"notes: must be text, got {type(notes).__name__}")

    return Policy(
        name=name,
        version=version,
        fingerprint=fingerprint,
        flag_at=flag_at,
        halt_at=halt_at,
        mode=mode,
        languages=languages,
        on_flag=on_flag,
        on_halt=on_halt,
        calibration=_json_safe(calibration, "calibration"),
        notes=notes,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy YAML file; errors name the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"policy file {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return parse_policy(text)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def dump_policy(policy: Policy) -> str:
    """The policy as YAML (keys in the documented order); `parse_policy(dump_policy(p)) == p`."""
    return yaml.safe_dump(policy.to_dict(), sort_keys=False, allow_unicode=True, width=100)


BUNDLED_DTYPES = ("float32", "float16")


def bundled_policy_path(dtype: str = "float32") -> Path:
    """The policy shipped in the package for the default ensemble's default scoring at `dtype`: one per
    dtype, since the dtype is part of the scoring fingerprint (float16 moves the reference ensemble's scores
    by under 1 %, bfloat16 by up to 18 %). A dtype without a bundled policy gets the float32 one, which the
    worker then refuses with the command to calibrate one."""
    folder = Path(__file__).resolve().parent / "bundled"
    return folder / ("default.yaml" if dtype not in BUNDLED_DTYPES[1:] else f"default-{dtype}.yaml")
