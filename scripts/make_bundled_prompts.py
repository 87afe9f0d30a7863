"""Regenerate the bundled prompt files from the reference world's lexicon (run from the repository root).

- `policies/bundled/calibration_prompts.txt`: every scene of the world captioned in its dominant language, the
  reference set the bundled default policy is calibrated on;
- `cli/demo_prompts.json`: a fixed spread of scenes in every language of the world, interleaved so that
  `emoe-gate demo --limit N` always covers every language.
"""

from __future__ import annotations

import json
from pathlib import Path

from reference.lexicon import DOMINANT, FREQUENCIES, HELD_OUT, LANGUAGES
from reference.world import all_scenes

ROOT = Path(__file__).resolve().parents[1]
# every colour, shape, size and position appears; two "pizza" scenes for the keyword analysis
DEMO_SCENES = (
    "red-circle-small-left",
    "blue-square-big-middle",
    "green-triangle-small-right",
    "yellow-pizza-big-left",
    "white-circle-big-right",
    "red-square-small-middle",
    "blue-triangle-big-left",
    "green-pizza-small-middle",
)


def main() -> None:
    scenes = all_scenes()
    calibration = ROOT / "policies" / "bundled" / "calibration_prompts.txt"
    lines = [
        "# Reference prompts for calibrating the bundled default policy (emoe-gate calibrate --prompts ...).",
        f"# Every scene of the reference world captioned in its dominant language ({DOMINANT}).",
        "# Regenerate with: python scripts/make_bundled_prompts.py",
        *(scene.caption(DOMINANT) for scene in scenes),
    ]
    calibration.write_text("\n".join(lines) + "\n", encoding="utf-8")

    by_key = {scene.key: scene for scene in scenes}
    languages = sorted(LANGUAGES, key=lambda code: -FREQUENCIES[code])
    prompts = [
        {"language": code, "scene": key, "prompt": by_key[key].caption(code)}
        for key in DEMO_SCENES
        for code in languages
    ]
    demo = {
        "description": (
            "Bundled demo prompts: eight scenes of the reference world in its seven languages (interleaved). "
            f"Training shares: {', '.join(f'{c} {FREQUENCIES[c]:.0%}' for c in languages)}; "
            f"held out from all training: {', '.join(HELD_OUT)}."
        ),
        "prompts": prompts,
    }
    (ROOT / "cli" / "demo_prompts.json").write_text(
        json.dumps(demo, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    print(f"{len(scenes)} calibration prompts, {len(prompts)} demo prompts")


if __name__ == "__main__":
    main()
