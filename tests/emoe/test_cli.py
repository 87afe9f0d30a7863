"""`emoe-gate score` and `emoe-gate generate` on the tiny ensemble."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import typer
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_score_json(tiny_folder: Path) -> None:
    result = runner.invoke(
        app, ["score", "a cat", "ein Hund", "--json", "--ensemble", str(tiny_folder), "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["prompt"] for r in rows] == ["a cat", "ein Hund"]
    assert all({"prompt", "score", "eu", "fingerprint"} <= set(r) and r["score"] > 0 for r in rows)
    assert "random weights" in result.stderr


def test_score_text_and_bad_prompt(tiny_folder: Path) -> None:
    result = runner.invoke(app, ["score", "a cat", "--ensemble", str(tiny_folder), "--steps", "3"])
    assert result.exit_code == 0 and "RANDOM WEIGHTS" in result.stdout
    lines = result.stdout.splitlines()
    # the scoring configuration is named; tiny records none, so it is the paper's
    assert "scoring: the paper's (split at the first cross-attention, mid-block output variance)" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["score", "eu"])
    assert lines[header].split() == ["score", "eu", "M", "lang", "decision", "fingerprint", "prompt"]
    assert lines[header + 1].endswith("'a cat'") and len(lines) == header + 2
    # the bundled policy is for the reference ensemble: no decision, and the line says why
    assert any(line.startswith("policy: ") and "no decision" in line for line in lines)
    bad = runner.invoke(app, ["score", "   ", "--ensemble", str(tiny_folder)])
    assert bad.exit_code == 2 and "prompts[0]: empty" in bad.stderr


def _policy_for(fingerprint: str, path: Path, flag_at: float, halt_at: float) -> Path:
    from policies.policy import dump_policy, parse_policy

    data = {"name": "t", "version": "1", "fingerprint": fingerprint, "flag_at": flag_at, "halt_at": halt_at}
    path.write_text(dump_policy(parse_policy(data)), encoding="utf-8")
    return path


def test_score_shows_the_policy_decision(tiny_folder: Path, tmp_path: Path) -> None:
    args = ["score", "a cat", "ein Hund", "--ensemble", str(tiny_folder), "--steps", "3"]
    rows = json.loads(runner.invoke(app, [*args, "--json"]).stdout.strip().splitlines()[-1])
    low, high = sorted(r["score"] for r in rows)
    policy = _policy_for(rows[0]["fingerprint"], tmp_path / "p.yaml", flag_at=low, halt_at=high * 2)
    result = runner.invoke(app, [*args, "--policy", str(policy)])
    assert result.exit_code == 0, result.output
    table = {line.rsplit("  ", 1)[-1]: line.split() for line in result.stdout.splitlines()}
    decided = {table["'a cat'"][4], table["'ein Hund'"][4]}
    assert decided == {"continue", "flag"}  # the lower score is at flag_at (continues), the higher above it
    as_json = json.loads(
        runner.invoke(app, [*args, "--json", "--policy", str(policy)]).stdout.splitlines()[-1]
    )
    assert {r["decision"]["action"] for r in as_json} == decided
    assert all(r["scoring_description"].startswith("scoring: the paper's") for r in as_json)
    # a policy named on the command line that was calibrated for other scores is an error, not a silent "-"
    other = _policy_for("0" * 64, tmp_path / "other.yaml", flag_at=0.1, halt_at=0.2)
    refused = runner.invoke(app, [*args, "--policy", str(other)])
    assert refused.exit_code == 2 and "--policy:" in refused.stderr and "calibrated for" in refused.stderr
    missing = runner.invoke(app, [*args, "--policy", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "--policy:" in missing.stderr


def test_score_paper_and_the_named_configuration(tiny_folder: Path) -> None:
    base = ["score", "a cat", "--ensemble", str(tiny_folder), "--steps", "3"]
    other = runner.invoke(app, [*base, "--split", "all", "--latent", "eps"])
    assert other.exit_code == 0, other.output
    assert (
        "scoring: whole expert paths, noise-prediction variance \u2014 not the paper's split and latent; "
        "see docs/reference-results.md"
    ) in other.stdout.splitlines()
    paper = runner.invoke(app, [*base, "--paper", "--json"])
    row = json.loads(paper.stdout.strip().splitlines()[-1])[0]
    assert (row["split"], row["latent"]) == ("attn2", "m_post")
    assert row["scoring_description"].startswith("scoring: the paper's")
    clash = runner.invoke(app, [*base, "--paper", "--latent", "eps"])
    assert clash.exit_code == 2 and "--paper" in clash.stderr


def test_help_reads_as_a_person_reads_it() -> None:
    score_help = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).stdout
    for shown in ("NAME|PATH", "m_post|m_pre|z_prev|eps", "attn2|attn1|all|LAYER,...", "FILE", "--paper"):
        assert shown in score_help, shown
    assert "not the paper's split" in score_help and "docs/reference-results.md" in score_help
    generate_help = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).stdout
    assert "SCORE" in generate_help and "DIR" in generate_help and "moe|experts" in generate_help
    assert "1 when --halt-above halted it" in generate_help


# what typer shows for a parameter without a metavar of its own: `<str>`, `<int range>` (typer 0.2x) or
# TEXT, INTEGER, FLOAT ... (older typer)
MACHINE_METAVAR = re.compile(r"<[a-z ]+>|\b(TEXT|INTEGER|FLOAT|BOOLEAN|FILENAME|DIRECTORY|UUID)( RANGE)?\b")


def all_commands() -> Iterator[tuple[list[str], typer.core.TyperCommand]]:
    """Every command and group of the CLI with its path, the root first."""
    stack = [([], typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        yield path, command
        stack.extend(([*path, name], sub) for name, sub in getattr(command, "commands", {}).items())


def test_every_help_shows_metavars_a_person_reads() -> None:
    """Issue #17: each argument and option names what it takes (PROMPT, FILE, URL, N ...), never its type."""
    commands = list(all_commands())
    assert len(commands) > 30  # the walk reached the subcommands
    for path, command in commands:
        for param in command.params:
            if not getattr(param, "is_flag", False) and param.name != "help":
                assert param.metavar, f"emoe-gate {' '.join(path)}: {param.name} has no metavar"
            # typer names an option after a metavar that spells its name (metavar="TENANT" gives --TENANT)
            assert all(opt == opt.lower() for opt in param.opts), (path, param.opts)
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).stdout
        found = MACHINE_METAVAR.search(shown)
        assert found is None, f"emoe-gate {' '.join(path)} --help shows {found.group()!r}:\n{shown}"


def test_generate_writes_image_and_score(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["generate", "a cat", "--out", str(out), "--ensemble", str(tiny_folder), "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "image.png").is_file()
    record = json.loads((out / "score.json").read_text())
    assert record["halted"] is False and record["ensemble"]["is_random"] is True and record["score"] > 0
    halted = runner.invoke(
        app,
        [
            "generate",
            "a cat",
            "--out",
            str(tmp_path / "h"),
            "--ensemble",
            str(tiny_folder),
            "--halt-above",
            "0",
        ],
    )
    # a script can tell: exit 1 when halted (0 when rendered, 2 on bad input)
    assert halted.exit_code == 1 and "halted" in halted.stdout
    assert not (tmp_path / "h" / "image.png").exists()
    assert json.loads((tmp_path / "h" / "score.json").read_text())["halted"] is True
    assert result.stdout.splitlines()[0].startswith("scoring: the paper's")


def test_describe_scoring_reads_a_recorded_configuration() -> None:
    """What a decision records (the split resolved to layer names) is named as the configuration was."""
    from emoe.config import ScoreConfig, describe_scoring

    first = "down_blocks.0.attentions.0.transformer_blocks.0"
    paper = {"split": [f"{first}.attn2.to_{p}" for p in "kqv"], "latent": "m_post", "fingerprint": "f"}
    assert (
        describe_scoring(paper)
        == describe_scoring(ScoreConfig())
        == ("scoring: the paper's (split at the first cross-attention, mid-block output variance)")
    )
    later = {"split": ["a.to_q", "b.to_q"], "latent": "eps", "at_step": 3}
    assert describe_scoring(later) == (
        "scoring: split at 2 MoE layers, noise-prediction variance, at step 4 \u2014 not the paper's split, "
        "latent and first step; see docs/reference-results.md"
    )
