"""Prompt language detection (offline, lingua): one detector per process over a fixed set of languages."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# The languages a prompt is told apart among (ISO 639-1). A fixed set keeps detection fast and
# stable over time, so the fairness reports compare like with like.
LANGUAGES: tuple[str, ...] = (
    "en",
    "es",
    "fr",
    "de",
    "it",
    "pt",
    "nl",
    "sv",
    "da",
    "nb",
    "fi",
    "pl",
    "cs",
    "ro",
    "hu",
    "tr",
    "ru",
    "uk",
    "el",
    "ar",
    "he",
    "fa",
    "hi",
    "bn",
    "ur",
    "id",
    "vi",
    "th",
    "zh",
    "ja",
    "ko",
    "sw",
)


@lru_cache(maxsize=1)
def _detector() -> Any:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of the most likely language of `text`, or None when it cannot tell."""
    if not text or not text.strip():
        return None
    language = _detector().detect_language_of(text)
    return None if language is None else language.iso_code_639_1.name.lower()


def warm_up() -> None:
    """Build the detector now (and load its models) rather than on the first request."""
    detect_language("a red circle on a blue square")
