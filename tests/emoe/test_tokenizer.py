from __future__ import annotations

from emoe.tokenizer import clip_tokenizer


def test_real_clip_ids_built_offline() -> None:
    tokenizer = clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408


def test_long_prompt_truncates_to_77() -> None:
    ids = clip_tokenizer()("cat " * 200, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407
