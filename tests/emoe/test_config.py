from __future__ import annotations

import math

import pytest

from emoe import ScoreConfig


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"guidance": math.nan}, "guidance"),
        ({"guidance": -1.0}, "guidance"),
        ({"guidance": math.inf}, "guidance"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"latent": "z0"}, "latent"),
        ({"experts": [1]}, "experts"),
        ({"experts": [1, 1]}, "experts"),
        ({"experts": [-1, 2]}, "experts"),
        ({"split": "attn3"}, "split"),
        ({"split": []}, "split"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"height": 0}, "height"),
        ({"scheduler": "magic"}, "scheduler"),
        ({"negative_prompt": None}, "negative_prompt"),
    ],
)
def test_bad_values_name_the_field(changes, field) -> None:
    with pytest.raises(ValueError, match=rf"ScoreConfig\.{field}:"):
        ScoreConfig(**changes)


def test_round_trip_and_unknown_keys() -> None:
    config = ScoreConfig(split=["a.b", "c.d"], experts=[0, 2], guidance=5)
    assert config.split == ("a.b", "c.d") and config.experts == (0, 2) and config.guidance == 5.0
    assert ScoreConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown field.*'cfg_scale'"):
        ScoreConfig.from_dict({"cfg_scale": 3})
    assert config.replace(seed=3).seed == 3
    with pytest.raises(ValueError, match=r"ScoreConfig\.steps"):
        config.replace(steps=0)
