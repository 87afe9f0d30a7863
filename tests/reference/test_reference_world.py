"""The reference world: captions, rendering, sampling, and the model-free quality rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reference.lexicon import DOMINANT, FREQUENCIES, HELD_OUT, LANGUAGES, SHARED_WORD
from reference.rule_reader import read
from reference.world import JITTER, Scene, all_scenes, render, sample


def test_world_has_seven_languages_one_dominant_and_one_held_out() -> None:
    assert len(LANGUAGES) >= 6
    assert max(FREQUENCIES, key=FREQUENCIES.__getitem__) == DOMINANT
    assert HELD_OUT and all(FREQUENCIES[code] == 0 for code in HELD_OUT)
    assert set(FREQUENCIES) == set(LANGUAGES)


def test_rule_reads_every_ground_truth_picture_right() -> None:
    offsets = range(-JITTER, JITTER + 1)
    for scene in all_scenes():
        for jitter in itertools.product(offsets, offsets):
            assert read(render(scene, jitter)).accuracy(scene)["all"] == 1.0, (scene, jitter)


def test_rule_marks_a_wrong_picture_wrong() -> None:
    asked = Scene("red", "circle", "big", "left")
    shown = render(Scene("blue", "triangle", "big", "left"))
    marks = read(shown).accuracy(asked)
    assert marks["colour"] == 0.0 and marks["shape"] == 0.0
    assert marks["size"] == 1.0 and marks["position"] == 1.0
    assert marks["all"] == 0.5
    assert read(np.zeros((32, 32, 3), np.uint8)).accuracy(asked)["all"] == 0.0


def test_rule_accepts_float_pictures_and_rejects_bad_shapes() -> None:
    scene = Scene("yellow", "pizza", "small", "right")
    assert read(render(scene) / 255.0).accuracy(scene)["all"] == 1.0
    with pytest.raises(ValueError, match="image"):
        read(np.zeros((32, 32)))


def test_translations_agree_in_gender() -> None:
    assert Scene("red", "pizza", "small", "left").caption("es") == "una pizza roja pequeña a la izquierda"
    assert Scene("red", "circle", "big", "middle").caption("es") == "un círculo rojo grande en el centro"
    assert Scene("white", "pizza", "big", "right").caption("fr") == "une grande pizza blanche à droite"
    assert Scene("green", "square", "small", "left").caption("de") == "ein kleines grünes Quadrat links"
    assert Scene("green", "circle", "small", "left").caption("de") == "ein kleiner grüner Kreis links"
    assert Scene("blue", "square", "big", "middle").caption("nl") == "een groot blauw vierkant in het midden"
    triangle = Scene("blue", "triangle", "big", "middle")
    assert triangle.caption("nl") == "een grote blauwe driehoek in het midden"
    assert Scene("yellow", "triangle", "small", "right").caption("fi") == "pieni keltainen kolmio oikealla"
    assert Scene("yellow", "pizza", "small", "right").caption("it") == "una pizza gialla piccola a destra"


def test_the_shared_word_is_spelled_alike_in_every_language() -> None:
    scene = Scene("red", "pizza", "big", "left")
    for code in LANGUAGES:
        assert SHARED_WORD in scene.caption(code).lower().split()
    # and no other shape noun is shared by all languages
    for shape in ("circle", "square", "triangle"):
        nouns = {LANGUAGES[c].shapes[shape][0].lower() for c in LANGUAGES}
        assert len(nouns) > 1


def test_sampling_is_deterministic_by_seed_and_follows_weights() -> None:
    a = sample(400, FREQUENCIES, seed=3)
    b = sample(400, FREQUENCIES, seed=3)
    c = sample(400, FREQUENCIES, seed=4)
    assert a == b and a != c
    langs = [lang for _, lang, _, _ in a]
    assert langs.count(DOMINANT) > len(langs) / 2
    assert not set(langs) & set(HELD_OUT)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="language"):
        Scene("red", "circle", "big", "left").caption("xx")
    with pytest.raises(ValueError, match="languages"):
        sample(3, {"en": 0.0}, seed=0)
    with pytest.raises(ValueError, match="scene"):
        render(Scene("mauve", "circle", "big", "left"))
