"""Policy files: validation errors name the key; identity is name, version and a content hash."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from policies import PolicyError, dump_policy, load_policy, parse_policy

FP = "ab" * 32


def doc(**changes) -> dict:
    base = {"name": "default", "version": "3", "fingerprint": FP, "flag_at": 1.0, "halt_at": 2.0}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        (doc(colour="red"), "colour", "unknown key"),
        (doc(flag_at=3.0), "halt_at", "below flag_at"),
        (doc(flag_at=math.inf), "flag_at", "finite"),
        (doc(halt_at=math.nan), "halt_at", "finite"),
        (doc(fingerprint=...), "fingerprint", "missing"),
        (doc(fingerprint="xyz"), "fingerprint", "64 lower-case hex"),
        (doc(name=...), "name", "missing"),
        (doc(flag_at="high"), "flag_at", "must be a number"),
        (doc(flag_at=True), "flag_at", "must be a number"),
        (doc(mode="audit"), "mode", "enforce, shadow"),
        (doc(languages={"de": {"halt_at": 0.5}}), "languages.de.halt_at", "below languages.de.flag_at"),
        (doc(languages={"de": {"flag_at": 1.5, "stop_at": 3}}), "languages.de.stop_at", "unknown key"),
        (doc(languages={"de": {"flag_at": math.inf}}), "languages.de.flag_at", "finite"),
        (doc(languages={"german": {"flag_at": 1.5}}), "languages", "language code"),
        (doc(languages={False: {"flag_at": 1.5}}), "languages", "quote"),
        (doc(notes=["a"]), "notes", "text"),
        (doc(on_flag="block"), "on_flag", "release, hold"),
        (doc(on_flag=True), "on_flag", "release, hold"),
        (doc(on_halt="retry"), "on_halt", "final, review"),
    ],
)
def test_validation_errors_name_the_key(data: dict, key: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert problem in message


def test_yaml_no_is_false_so_norwegian_must_be_quoted() -> None:
    text = f"name: n\nversion: 1\nfingerprint: {FP}\nflag_at: 1\nhalt_at: 2\n"
    text += "languages:\n  no: {flag_at: 1.5}\n"
    with pytest.raises(PolicyError, match="quote"):
        parse_policy(text)
    policy = parse_policy(text.replace("  no:", "  'no':"))
    assert policy.languages["no"].flag_at == 1.5


def test_valid_policy_and_defaults() -> None:
    policy = parse_policy(doc(version=3, languages={"DE": {"flag_at": 1.5}}))
    assert policy.version == "3"  # a YAML integer version is read as text
    assert policy.mode == "enforce"
    assert policy.languages["de"].flag_at == 1.5 and policy.languages["de"].halt_at == 2.0  # inherits halt_at
    assert policy.id == f"default@3#{policy.hash[:12]}"


def test_equal_thresholds_are_allowed() -> None:
    assert parse_policy(doc(flag_at=2.0, halt_at=2.0)).flag_at == 2.0


def test_hash_follows_content_not_layout() -> None:
    a = parse_policy(doc(notes="x"))
    b = parse_policy(dict(reversed(list(doc(notes="x").items()))))
    assert a.hash == b.hash
    assert parse_policy(doc(halt_at=2.0000001)).hash != a.hash
    assert parse_policy(doc(notes="y")).hash != a.hash
    assert parse_policy(doc(version="4", notes="x")).id != a.id


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    policy = parse_policy(
        doc(
            mode="shadow",
            languages={"fr": {"halt_at": 2.5}},
            calibration={"n": 40, "ci": [0.1, 0.2]},
            notes="n",
        )
    )
    path = tmp_path / "p.yaml"
    path.write_text(dump_policy(policy))
    loaded = load_policy(path)
    assert loaded == policy and loaded.hash == policy.hash


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nversion: 1\nflag_at: 1\nhalt_at: 2\n")
    with pytest.raises(PolicyError, match=r"bad\.yaml: fingerprint: missing"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "absent.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy(path)


def test_on_flag_and_on_halt_default_to_todays_behaviour_and_keep_old_hashes() -> None:
    old = parse_policy(doc())
    assert (old.on_flag, old.on_halt) == ("release", "final")
    assert parse_policy(doc(on_flag="release", on_halt="final")).hash == old.hash  # defaults are not hashed
    held = parse_policy(
        "name: default\nversion: '3'\nfingerprint: " + FP + "\nflag_at: 1\nhalt_at: 2\n"
        "on_flag: hold\non_halt: review\n"
    )
    assert (held.on_flag, held.on_halt) == ("hold", "review")
    assert held.hash != old.hash
    assert parse_policy(dump_policy(held)) == held
    assert "on_flag: hold" in dump_policy(held) and "on_flag" not in dump_policy(old)
