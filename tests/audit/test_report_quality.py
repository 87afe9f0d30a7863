"""Quality for the report: the CLIP score from a CLIP checkpoint folder (a tiny random CLIP saved here) and
`emoe-gate eval quality`, which stores it for every image so that the report can show quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from audit import db
from audit.report import ReportOptions, build_report
from tests.audit.report_seed import save_tiny_clip, seed


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def picture(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def test_clip_score_matches_the_models_own_similarity(clip_folder) -> None:
    from emoe.quality import ClipScore

    scorer = ClipScore.from_pretrained(clip_folder)
    images = [picture(1), picture(2), picture(3, (48, 40))]
    texts = ["a photo of a cat", "ein Foto einer Katze", "a red circle " * 40]  # the last is truncated to 77
    scores = scorer.score(images, texts)
    assert all(0.0 <= s <= 100.0 for s in scores)
    # CLIPModel's forward: logits_per_image = exp(logit_scale) * cos(image, text)
    tok = scorer.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                           pixel_values=scorer._pixels(images))  # fmt: skip
    cos = torch.diagonal(out.logits_per_image) / scorer.model.logit_scale.exp()
    assert scores == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)
    # one pair alone scores as in the batch; the same input twice gives the same score
    assert scorer.score(images[1:2], texts[1:2]) == pytest.approx(scores[1:2], abs=1e-3)
    assert scorer.score(images, texts) == scores


def test_clip_preprocessing_and_errors(clip_folder, tmp_path) -> None:
    from emoe.quality import CLIP_MEAN, CLIP_STD, ClipScore

    scorer = ClipScore.from_pretrained(clip_folder)
    im = picture(5)
    x = scorer._pixels([im, picture(6, (64, 40))])
    assert tuple(x.shape) == (2, 3, 32, 32)
    expected = (torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255.0
                - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)  # fmt: skip
    assert torch.allclose(x[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="texts: 1 texts for 2 images"):
        scorer.score([im, im], ["x"])
    with pytest.raises(ValueError, match="not a CLIP checkpoint folder"):
        ClipScore.from_pretrained(tmp_path / "nothing")


def test_eval_quality_stores_clip_scores_for_the_report(clip_folder, sqlite_url, tmp_path) -> None:
    from cli.main import app
    from emoe.quality import ClipScore

    db.ensure_schema(sqlite_url)
    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        picture(10 + i).save(path)
        files.append(path)
    rows = [
        {"language": "en", "score": 0.1, "action": "continue", "prompt": "a cat", "storage_uri": f"file://{files[0]}"},
        {"language": "fi", "score": 0.4, "action": "continue", "prompt": "kissa",
         "labels": {"reference_text": "a cat"}, "storage_uri": f"file://{files[1]}"},
        {"language": "de", "score": 0.2, "action": "continue", "prompt": None, "storage_uri": f"file://{files[2]}"},
        {"language": "de", "score": 0.3, "action": "flag", "prompt": "x", "storage_uri": "file:///gone.png"},
    ]  # fmt: skip
    seed(db.get_engine(sqlite_url), rows)
    with db.session_scope(sqlite_url) as session:
        before = build_report(session, ReportOptions())
    assert before["quality"]["available"] is False

    res = CliRunner().invoke(app, ["eval", "quality", "--model", str(clip_folder), "--db", sqlite_url,
                                   "--no-progress", "--batch-size", "3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "stored clip_score for 2 images; skipped 2" in res.output

    scorer = ClipScore.from_pretrained(clip_folder)
    expect = scorer.score(
        [Image.open(files[0]), Image.open(files[1])], ["a cat", "a cat"]
    )  # fi: its English text
    with db.session_scope(sqlite_url) as session:
        rep = build_report(session, ReportOptions())
    assert rep["quality"]["available"] and rep["quality"]["metrics"] == ["clip_score"]
    groups = {g["group"]: g for g in rep["fairness"]["groups"]}
    assert groups["en"]["mean_quality"]["value"] == pytest.approx(expect[0], abs=1e-4)
    assert groups["fi"]["mean_quality"]["value"] == pytest.approx(expect[1], abs=1e-4)
    assert groups["de"]["quality_n"] == 0
    again = CliRunner().invoke(app, ["eval", "quality", "--model", str(clip_folder), "--db", sqlite_url,
                                     "--no-progress"])  # fmt: skip
    assert "stored clip_score for 0 images" in again.output  # already scored: nothing to do
    bad = CliRunner().invoke(app, ["eval", "quality", "--model", str(tmp_path), "--db", sqlite_url])
    assert bad.exit_code == 2
    db.dispose_engine(sqlite_url)


def test_store_quality_scores_batches_skips_and_resumes(clip_folder, sqlite_url, tmp_path) -> None:
    """audit's loop behind `eval quality`: one commit per batch, English text first, nothing scored twice."""
    from audit.quality import store_quality_scores
    from emoe.quality import ClipScore

    db.ensure_schema(sqlite_url)
    files = [tmp_path / f"q{i}.png" for i in range(3)]
    for i, path in enumerate(files):
        picture(20 + i).save(path)
    rows = [
        {"language": "fi", "score": 0.4, "action": "continue", "prompt": "kissa",
         "labels": {"english": "a cat"}, "storage_uri": f"file://{files[0]}"},
        {"language": "en", "score": 0.1, "action": "continue", "prompt": "a dog", "storage_uri": f"file://{files[1]}"},
        {"language": "en", "score": 0.2, "action": "continue", "prompt": None, "storage_uri": f"file://{files[2]}"},
        {"language": "de", "score": 0.3, "action": "flag", "prompt": "x", "storage_uri": "file:///gone.png"},
    ]  # fmt: skip
    seed(db.get_engine(sqlite_url), rows)
    scorer = ClipScore.from_pretrained(clip_folder)
    seen: list[int] = []
    scored, skipped = store_quality_scores(
        sqlite_url, scorer, reference_label="english", batch_size=3, on_batch=seen.append
    )
    assert (scored, skipped) == (2, 2) and seen == [3, 1]
    expect = scorer.score([Image.open(files[0]), Image.open(files[1])], ["a cat", "a dog"])
    with db.session_scope(sqlite_url) as session:
        rep = build_report(session, ReportOptions())
    groups = {g["group"]: g for g in rep["fairness"]["groups"]}
    assert groups["fi"]["mean_quality"]["value"] == pytest.approx(expect[0], abs=1e-4)
    assert groups["en"]["mean_quality"]["value"] == pytest.approx(expect[1], abs=1e-4)
    # a second run finds only the two it could not score; --overwrite scores the other two again
    assert store_quality_scores(sqlite_url, scorer, reference_label="english") == (0, 2)
    assert store_quality_scores(sqlite_url, scorer, reference_label="english", overwrite=True) == (2, 2)
    db.dispose_engine(sqlite_url)


@pytest.mark.slow
def test_eval_multilingual_with_quality_model(clip_folder, tmp_path, monkeypatch) -> None:
    """Each prompt's image is generated and CLIP-scored against its item's English text (figures 4 and 7)."""
    import json

    from cli.main import app

    out = tmp_path / "ml"
    args = ["eval", "multilingual", "--ensemble", "tiny", "--per-language", "1", "--languages", "en,fi,de,ja",
            "--quality-model", str(clip_folder), "--out", str(out), "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(0.0 <= r["quality"] <= 100.0 for r in rows)
    assert len({r["english"] for r in rows}) == 1  # all four judged against the same English text
    report = json.loads((out / "report.json").read_text())
    assert report["quality"] == {"available": True, "n": 4, "metrics": ["clip_score"], "note": None}
    r = report["correlation"]["r"]
    assert report["correlation"]["n_groups"] == 4
    qualities = {r_["quality"] for r_ in rows}
    if len(qualities) == 1:  # a random CLIP can put every pair below cos 0 (score 0): no r, and it says why
        assert r["value"] is None and "constant" in r["method"]
    else:
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    # distribution, rates, quality per quartile, score against quality (no time series in an evaluation)
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
