"""Quality scores of stored images (the report's quality): each image scored against its job's English text.

The scorer is passed in (`emoe.quality.ClipScore` in `emoe-gate eval quality`): audit never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from PIL import Image

from audit import db
from audit.report_queries import artifacts_to_score, set_quality


class ImageScorer(Protocol):
    """Scores (image, text) pairs under one metric's name."""

    metric: str

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]: ...


def store_quality_scores(
    url: str,
    scorer: ImageScorer,
    *,
    since: datetime | None = None,
    reference_label: str = "reference_text",
    overwrite: bool = False,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Score the stored images batch by batch, committing each batch; returns (scored, skipped).

    Each image is scored against its job's label `reference_label` when it has one, else its prompt; images
    whose prompt was redacted, or whose file is gone, are skipped. Committing per batch keeps what an
    interrupted run did; `on_batch` is told how many images each batch went through.
    """
    scored = skipped = 0
    after = 0
    while True:
        with db.session_scope(url) as session:
            todo = artifacts_to_score(
                session, overwrite=overwrite, since=since, after_id=after, limit=batch_size
            )
        if not todo:
            break
        after = todo[-1]["id"]
        images, texts, ids = [], [], []
        for row in todo:
            text = row["labels"].get(reference_label) or row["prompt"]
            path = Path(row["storage_uri"].removeprefix("file://"))
            if not text or not path.is_file():
                skipped += 1
                continue
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            texts.append(text)
            ids.append(row["id"])
        if ids:
            values = scorer.score(images, texts)
            with db.session_scope(url) as session:
                set_quality(session, dict(zip(ids, values, strict=True)), scorer.metric)
        scored += len(ids)
        if on_batch is not None:
            on_batch(len(todo))
    return scored, skipped
