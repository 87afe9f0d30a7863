"""Fairness statistics against hand-computed values on small fixed records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.fairness import (
    IntervalOptions,
    Records,
    group_stats,
    keyword_lowest_quartile_share,
    mean_estimate,
    median_estimate,
    quartile_table,
    rate_difference,
    rate_estimate,
    rate_ratio,
    score_quality_correlation,
    score_quartiles,
    wilson_interval,
)

Z = 1.959963984540054


def recs(rows: list[tuple]) -> Records:
    """rows: (group, score, action[, prompt[, quality]])."""
    out = []
    for row in rows:
        group, score, action, *rest = row
        out.append(
            {
                "group": group,
                "score": score,
                "action": action,
                "prompt": rest[0] if rest else None,
                "quality": rest[1] if len(rest) > 1 else None,
            }
        )
    return Records.from_rows(out)


# --- intervals for proportions ---------------------------------------------------------------------------


def test_wilson_matches_hand_computation() -> None:
    # 1/4: centre (p + z²/2n)/(1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    lo, hi = wilson_interval(1, 4)
    assert lo == pytest.approx(0.045586, abs=1e-5)
    assert hi == pytest.approx(0.699358, abs=1e-5)
    # 0/10: lower bound exactly 0, upper z²/(n + z²)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(Z**2 / (10 + Z**2), abs=1e-9)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / (10 + Z**2), abs=1e-9)


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="'n'"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="'k'"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 4, confidence=1.5)


def test_rate_intervals_shrink_with_n() -> None:
    small, large = rate_estimate(3, 10), rate_estimate(300, 1000)
    assert small.value == large.value == 0.3
    assert small.contains_value and large.contains_value
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 5


def test_newcombe_difference_matches_published_example() -> None:
    # Newcombe (1998), example (a): 56/70 vs 48/80 -> 0.2000 (0.0524, 0.3339)
    d = rate_difference(56, 70, 48, 80)
    assert d.value == pytest.approx(0.2)
    assert d.ci_low == pytest.approx(0.0524, abs=1e-4)
    assert d.ci_high == pytest.approx(0.3339, abs=1e-4)


def test_katz_ratio_matches_hand_computation() -> None:
    # 10/100 vs 20/100: ratio 0.5, se(log) = sqrt(1/10 - 1/100 + 1/20 - 1/100) = sqrt(0.13)
    r = rate_ratio(10, 100, 20, 100)
    se = math.sqrt(0.13)
    assert r.value == pytest.approx(0.5)
    assert r.ci_low == pytest.approx(0.5 * math.exp(-Z * se), rel=1e-9)
    assert r.ci_high == pytest.approx(0.5 * math.exp(Z * se), rel=1e-9)
    assert rate_ratio(1, 10, 0, 10).value is None  # reference rate 0: undefined, said in the method
    assert "reference rate is 0" in rate_ratio(1, 10, 0, 10).method
    zero = rate_ratio(0, 10, 2, 10)  # a zero count: corrected interval that still contains 0
    assert zero.value == 0.0 and zero.ci_low <= 0.0 < zero.ci_high and "0.5" in zero.method


# --- means and medians ---------------------------------------------------------------------------------


def test_mean_and_median_of_a_group_of_one_have_no_interval() -> None:
    m, med = mean_estimate([0.7]), median_estimate([0.7])
    assert m.value == 0.7 and m.ci_low is None and m.ci_high is None and "at least 2" in m.method
    assert med.value == 0.7 and med.ci_low is None


def test_mean_and_median_of_zeros_are_exactly_zero() -> None:
    m, med = mean_estimate([0.0] * 5), median_estimate([0.0] * 5)
    assert (m.value, m.ci_low, m.ci_high) == (0.0, 0.0, 0.0)
    assert (med.value, med.ci_low, med.ci_high) == (0.0, 0.0, 0.0)


def test_bootstrap_is_seeded_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.gamma(2.0, 0.2, size=20), rng.gamma(2.0, 0.2, size=2000)
    seed3 = IntervalOptions(seed=3)
    a, b = mean_estimate(small, intervals=seed3), mean_estimate(small, intervals=seed3)
    assert a == b and a.method == "bootstrap"
    assert mean_estimate(small, intervals=IntervalOptions(seed=4)) != a
    assert a.value == pytest.approx(small.mean())
    for est in (a, mean_estimate(large), median_estimate(small), median_estimate(large)):
        assert est.contains_value
    assert (mean_estimate(large).ci_high - mean_estimate(large).ci_low) < (a.ci_high - a.ci_low) / 4
    med_s, med_l = median_estimate(small), median_estimate(large)
    assert med_s.value == pytest.approx(np.median(small))
    assert (med_l.ci_high - med_l.ci_low) < (med_s.ci_high - med_s.ci_low) / 3


def test_bootstrap_mean_interval_is_close_to_the_standard_error() -> None:
    x = np.arange(100, dtype=float)  # mean 49.5, population sd sqrt((100²-1)/12) = 28.866
    m = mean_estimate(x, intervals=IntervalOptions(n_boot=4000))
    se = math.sqrt((100**2 - 1) / 12) / 10
    assert m.ci_low == pytest.approx(49.5 - Z * se, abs=0.35)
    assert m.ci_high == pytest.approx(49.5 + Z * se, abs=0.35)


def test_large_groups_use_normal_and_order_statistic_intervals() -> None:
    x = np.arange(2001, dtype=float)
    med = median_estimate(x, intervals=IntervalOptions(bootstrap_max_n=2000))
    # ranks floor(n/2 - z√n/2) = 956 and ceil(1 + n/2 + z√n/2) = 1046 (1-based) of 0..2000
    assert med.method == "order-statistic"
    assert (med.value, med.ci_low, med.ci_high) == (1000.0, 955.0, 1045.0)
    m = mean_estimate(x, intervals=IntervalOptions(n_boot=4000, bootstrap_max_n=2000))
    se = x.std() / math.sqrt(2001)
    assert m.method == "normal"
    assert m.ci_low == pytest.approx(1000 - Z * se, rel=0.003)
    assert m.ci_high == pytest.approx(1000 + Z * se, rel=0.003)


# --- the per-group table --------------------------------------------------------------------------------

TABLE_ROWS = [
    ("en", 0.1, "continue"),
    ("en", 0.2, "flag"),
    ("en", 0.3, "halt"),
    ("en", 0.4, "continue"),
    ("fi", 0.9, "halt"),  # a group of one
    ("zz", 0.0, "continue"),  # a group of zeros
    ("zz", 0.0, "continue"),
    ("zz", 0.0, "continue"),
]


def test_group_stats_hand_values() -> None:
    table = group_stats(recs(TABLE_ROWS), min_group_size=3)
    assert [g.group for g in table.groups] == ["en", "fi", "zz"]
    en, fi, zz = table.group("en"), table.group("fi"), table.group("zz")
    assert (en.n, en.halts, en.flags) == (4, 1, 1)
    assert en.mean_score.value == pytest.approx(0.25)
    assert en.median_score.value == pytest.approx(0.25)
    assert en.halt_rate.value == 0.25
    assert (en.halt_rate.ci_low, en.halt_rate.ci_high) == pytest.approx(wilson_interval(1, 4))
    assert en.is_reference and en.disparity is None and en.warnings == []
    # the group of one: estimates, no mean interval, warned, halt rate with a real Wilson interval
    assert fi.n == 1 and fi.mean_score.value == 0.9 and fi.mean_score.ci_low is None
    assert any("too few" in w for w in fi.warnings)
    assert fi.halt_rate.value == 1.0 and fi.halt_rate.ci_low == pytest.approx(1 / (1 + Z**2))
    assert fi.disparity.halt_rate_difference.value == pytest.approx(0.75)
    assert fi.disparity.halt_rate_difference.contains_value
    assert fi.disparity.mean_score_difference.value == pytest.approx(0.65)
    assert fi.disparity.mean_score_difference.ci_low is None  # one value: no resampling distribution
    # the group of zeros: mean 0 with interval [0, 0]; ratio to English 0; its halt ratio has a 0 count
    assert (zz.mean_score.value, zz.mean_score.ci_low, zz.mean_score.ci_high) == (0.0, 0.0, 0.0)
    assert zz.halt_rate.value == 0.0 and zz.halt_rate.ci_low == 0.0
    assert zz.disparity.mean_score_ratio.value == 0.0
    assert zz.disparity.mean_score_ratio.ci_high == 0.0
    assert zz.disparity.mean_score_difference.value == pytest.approx(-0.25)
    assert zz.disparity.mean_score_difference.contains_value
    assert zz.disparity.flag_rate_difference.value == pytest.approx(-0.25)
    assert zz.warnings == []  # 3 >= min_group_size


def test_group_stats_reference_missing_or_zero() -> None:
    table = group_stats(recs(TABLE_ROWS), reference="de")
    assert not table.reference_present and "'de'" in table.notes[0]
    assert all(g.disparity is None for g in table.groups)
    zero_ref = group_stats(recs(TABLE_ROWS), reference="zz")
    assert zero_ref.group("en").disparity.mean_score_ratio.value is None
    assert "reference mean score is 0" in zero_ref.group("en").disparity.mean_score_ratio.method


def test_group_stats_is_independent_of_other_groups_and_order() -> None:
    a = group_stats(recs(TABLE_ROWS)).group("en")
    b = group_stats(recs(list(reversed(TABLE_ROWS[:4])))).group("en")
    assert a.mean_score == b.mean_score and a.median_score == b.median_score


def test_group_stats_json_has_intervals_beside_estimates() -> None:
    d = group_stats(recs(TABLE_ROWS)).to_dict()
    fi = next(g for g in d["groups"] if g["group"] == "fi")
    for key in ("mean_score", "median_score", "halt_rate", "flag_rate", "mean_quality"):
        assert set(fi[key]) == {"value", "ci_low", "ci_high", "method"}
    assert set(fi["disparity"]["halt_rate_ratio"]) == {"value", "ci_low", "ci_high", "method"}


def test_interval_options_name_the_bad_field_and_reach_every_interval() -> None:
    with pytest.raises(ValueError, match="field 'confidence'"):
        IntervalOptions(confidence=1.0)
    with pytest.raises(ValueError, match="field 'n_boot' must be at least 10"):
        IntervalOptions(n_boot=9)
    opts = IntervalOptions(confidence=0.8, n_boot=50, seed=9, bootstrap_max_n=2)
    table = group_stats(recs(TABLE_ROWS), intervals=opts)
    d = table.to_dict()
    assert (d["confidence"], d["n_boot"], d["seed"]) == (0.8, 50, 9)
    en = table.group("en")
    assert en.halt_rate == rate_estimate(en.halts, en.n, 0.8)
    assert en.mean_score.method == "normal" and en.median_score.method == "order-statistic"  # n > 2
    assert en.mean_score == mean_estimate(
        [g[1] for g in TABLE_ROWS if g[0] == "en"], intervals=opts, key="en"
    )


def test_records_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="record 1: field 'action'"):
        Records.from_rows(
            [{"group": "en", "score": 1, "action": "halt"}, {"group": "en", "score": 1, "action": "x"}]
        )
    with pytest.raises(ValueError, match="field 'score'"):
        Records.from_rows([{"group": "en", "score": "high", "action": "halt"}])
    with pytest.raises(ValueError, match="field 'score' must be finite"):
        Records.from_columns(score=[float("nan")], action=["halt"], group=["en"])
    with pytest.raises(ValueError, match="field 'group' has 2 values"):
        Records.from_columns(score=[1.0], action=["halt"], group=["en", "fi"])


# --- quartiles (tables 1 and 3, figure 4) ---------------------------------------------------------------


def test_quartiles_by_rank() -> None:
    assert score_quartiles([5, 1, 4, 2, 3, 6, 8, 7]).tolist() == [3, 1, 2, 1, 2, 3, 4, 4]
    assert score_quartiles([1, 2, 3, 4, 5]).tolist() == [1, 1, 2, 3, 4]
    assert score_quartiles([]).tolist() == []


def test_quartiles_ties_share_the_lower_quartile_whatever_the_order() -> None:
    assert score_quartiles([1, 1, 1, 1, 2, 3, 4, 5]).tolist() == [1, 1, 1, 1, 3, 3, 4, 4]
    assert score_quartiles([5, 1, 4, 1, 3, 1, 2, 1]).tolist() == [4, 1, 4, 1, 3, 1, 3, 1]
    assert score_quartiles([2.0] * 6).tolist() == [1] * 6


def test_quartile_table_hand_values() -> None:
    prompts = ["a b", "a b c d", "abcdef", "a", "x y z w v u", "x", "qq qq", "r s t"]
    scores = [1, 2, 3, 4, 5, 6, 7, 8]
    quality = [30.0, 28.0, 20.0, None, 10.0, 12.0, None, None]
    records = Records.from_rows(
        {"group": "en", "score": s, "action": "continue", "prompt": p, "quality": q}
        for s, p, q in zip(scores, prompts, quality, strict=True)
    )
    q1, q2, q3, q4 = quartile_table(records)
    assert [r.n for r in (q1, q2, q3, q4)] == [2, 2, 2, 2]
    assert (q1.score_min, q1.score_max) == (1.0, 2.0)
    # Q1 = "a b" (3 chars, 2 words), "a b c d" (7 chars, 4 words)
    assert q1.mean_chars.value == 5.0 and q1.sd_chars == pytest.approx(math.sqrt(8))
    assert q1.mean_words.value == 3.0 and q1.sd_words == pytest.approx(math.sqrt(2))
    assert q1.mean_quality.value == 29.0 and q1.quality_n == 2
    # Q2 = "abcdef", "a": one quality score only -> estimate without interval
    assert q2.mean_chars.value == 3.5 and q2.quality_n == 1 and q2.mean_quality.value == 20.0
    assert q2.mean_quality.ci_low is None
    assert q3.mean_words.value == 3.5 and q3.mean_quality.value == 11.0
    assert q4.quality_n == 0 and q4.mean_quality.value is None
    assert q1.mean_chars.contains_value


def test_quartile_table_with_empty_quartile_from_ties() -> None:
    records = Records.from_rows(
        {"group": "en", "score": s, "action": "continue", "prompt": "p"} for s in [0, 0, 0, 1]
    )
    rows = quartile_table(records)
    assert [r.n for r in rows] == [3, 0, 0, 1]
    assert rows[1].mean_chars.value is None and rows[1].score_min is None


# --- keyword share (table 4) ----------------------------------------------------------------------------


def test_keyword_share_in_lowest_quartile_per_language() -> None:
    rows = [
        ("en", 1, "continue", "a pizza"),
        ("en", 2, "continue", "Pizzas on a table"),
        ("en", 3, "continue", "a dog"),
        ("en", 4, "continue", "a cat"),
        ("en", 5, "continue", "pizza slice"),
        ("en", 6, "continue", None),  # redacted: its score still counts for the quartiles
        ("en", 7, "continue", "a car"),
        ("en", 8, "halt", "PIZZA!"),
        ("fi", 10, "continue", "pizzaa pöydällä"),
        ("fi", 20, "continue", "koira"),
        ("fi", 30, "continue", "kissa"),
        ("fi", 40, "continue", "auto"),
    ]
    en, fi = keyword_lowest_quartile_share(recs(rows), "pizza")
    # en Q1 = scores 1, 2 -> 2 of the 4 pizza prompts
    assert (en.group, en.n_group, en.n_keyword, en.n_keyword_q1, en.n_redacted) == ("en", 8, 4, 2, 1)
    assert en.share_q1.value == 0.5
    assert (en.share_q1.ci_low, en.share_q1.ci_high) == pytest.approx(wilson_interval(2, 4))
    assert (fi.n_keyword, fi.n_keyword_q1, fi.share_q1.value) == (1, 1, 1.0)
    with pytest.raises(ValueError, match="keyword"):
        keyword_lowest_quartile_share(recs(rows), "  ")


def test_the_report_keyword_shares_use_the_report_confidence() -> None:
    from audit.report import ReportOptions, report_from_records

    rec = recs([("en", i, "continue", "a pizza" if i % 2 else "a dog") for i in range(12)])
    options = ReportOptions(keywords=("pizza",), intervals=IntervalOptions(confidence=0.8))
    (en,) = report_from_records(rec, options)["keywords"][0]["groups"]
    assert en["share_q1"] == rate_estimate(en["n_keyword_q1"], en["n_keyword"], 0.8).to_dict()
    assert en["share_q1"] != rate_estimate(en["n_keyword_q1"], en["n_keyword"]).to_dict()


def test_keyword_absent_gives_undefined_share() -> None:
    (en,) = keyword_lowest_quartile_share(recs([("en", 1, "continue", "a dog")]), "pizza")
    assert en.n_keyword == 0 and en.share_q1.value is None


# --- correlation (figure 7) -----------------------------------------------------------------------------


def test_correlation_of_group_means_hand_values() -> None:
    # group means x = 1..5, quality y = 5,3,4,1,2: Σdxdy = -8, Σdx² = Σdy² = 10 -> r = -0.8
    rows = []
    for g, x, y in zip("abcde", [1, 2, 3, 4, 5], [5, 3, 4, 1, 2], strict=True):
        rows += [(g, x, "continue", None, y), (g, x, "continue", None, y)]
    corr = score_quality_correlation(group_stats(recs(rows)))
    assert corr.n_groups == 5 and corr.note is None
    assert corr.r.value == pytest.approx(-0.8)
    half = Z / math.sqrt(2)
    assert corr.r.ci_low == pytest.approx(math.tanh(math.atanh(-0.8) - half))
    assert corr.r.ci_high == pytest.approx(math.tanh(math.atanh(-0.8) + half))
    assert corr.r.contains_value


def test_correlation_says_so_without_quality() -> None:
    corr = score_quality_correlation(group_stats(recs(TABLE_ROWS)))
    assert corr.r.value is None and corr.n_groups == 0 and "quality" in corr.note
    rows = [(g, x, "continue", None, y) for g, x, y in zip("abc", [1, 2, 3], [3, 1, 2], strict=True)]
    three = score_quality_correlation(group_stats(recs(rows)))
    assert three.r.value == pytest.approx(-0.5) and three.r.ci_low is None


@pytest.mark.parametrize("seed", range(6))
def test_every_interval_contains_its_estimate_on_random_records(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 600))
    groups = rng.choice(["en", "fi", "de", "ja"], size=n, p=[0.5, 0.3, 0.15, 0.05])
    scores = rng.gamma(2.0, 0.2, size=n) * np.where(groups == "fi", 1.4, 1.0)
    actions = np.where(scores > 0.9, "halt", np.where(scores > 0.6, "flag", "continue"))
    quality = np.where(rng.random(n) < 0.5, 30 - 10 * scores + rng.normal(0, 1, n), np.nan)
    rec = Records.from_columns(score=scores, action=actions, group=groups, quality=quality,
                               chars=rng.integers(5, 80, n), words=rng.integers(1, 15, n))  # fmt: skip
    table = group_stats(rec, intervals=IntervalOptions(bootstrap_max_n=100))
    checked = 0
    for g in table.groups:
        ests = [g.mean_score, g.median_score, g.halt_rate, g.flag_rate, g.mean_quality]
        if g.disparity:
            ests += [getattr(g.disparity, k) for k in g.disparity.__dataclass_fields__]
        for est in ests:
            if est.ci_low is not None:
                assert est.ci_low <= est.value <= est.ci_high, (g.group, est)
                checked += 1
    for row in quartile_table(rec, intervals=IntervalOptions(bootstrap_max_n=100)):
        for est in (row.mean_chars, row.mean_words, row.mean_quality):
            if est.ci_low is not None:
                assert est.ci_low <= est.value <= est.ci_high
                checked += 1
    assert checked > 20


# --- demographic parity over all groups (checked against fairlearn) ------------------------------------


def _parity_records(seed: int) -> Records:
    rng = np.random.default_rng(seed)
    rows = []
    for g, n, p_halt in (("en", 40, 0.1), ("es", 17, 0.4), ("fi", 9, 0.8), ("de", 3, 0.0), ("nl", 1, 1.0)):
        for _ in range(n):
            u = rng.random()
            action = "halt" if u < p_halt else ("flag" if u < p_halt + 0.2 else "continue")
            rows.append((g, float(rng.random()), action))
    return recs(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demographic_parity_equals_fairlearn_exactly(seed: int) -> None:
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio

    rec = _parity_records(seed)
    parity = group_stats(rec).parity
    sensitive = rec.group.astype(str)
    for outcome, selected in (("halt", rec.action == "halt"), ("acceptance", rec.action != "halt")):
        y_pred = selected.astype(int)
        y_true = np.zeros_like(y_pred)  # selection rate does not look at the truth
        fl_diff = demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive)
        fl_ratio = demographic_parity_ratio(y_true, y_pred, sensitive_features=sensitive)
        summary = parity[outcome]
        assert summary.difference.value == fl_diff
        assert summary.ratio.value == fl_ratio
        assert summary.n_groups == 5
        for est in (summary.difference, summary.ratio):
            assert est.contains_value and est.ci_low < est.ci_high
    # nl (1/1 halted, or fi when all 9 of its halted: ties go to the first name) and de (0/3) are the extremes
    rates = {g.group: g.halt_rate.value for g in group_stats(rec).groups}
    assert parity["halt"].lowest == "de" and parity["acceptance"].highest == "de"
    assert parity["halt"].highest == parity["acceptance"].lowest == min(g for g in rates if rates[g] == 1.0)


def test_demographic_parity_intervals_are_simultaneous_wilson() -> None:
    from audit.fairness import demographic_parity

    small = demographic_parity({"a": (2, 10), "b": (5, 10)}, outcome="halt")
    large = demographic_parity({"a": (200, 1000), "b": (500, 1000)}, outcome="halt")
    assert small.difference.value == pytest.approx(0.3) and large.difference.value == pytest.approx(0.3)
    # two groups: each Wilson interval at 97.5 %; difference in [max(0, lo_b − hi_a), hi_b − lo_a]
    (la, ua), (lb, ub) = wilson_interval(200, 1000, 0.975), wilson_interval(500, 1000, 0.975)
    assert (large.difference.ci_low, large.difference.ci_high) == (lb - ua, ub - la)
    assert (large.ratio.ci_low, large.ratio.ci_high) == (la / ub, ua / lb)
    assert large.difference.method == "simultaneous wilson (bonferroni over 2 groups)"
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    assert width(large.difference) < width(small.difference) / 3
    # equal rates: the difference's interval starts at 0 (not above it), the ratio's ends at 1
    same = demographic_parity({"a": (3, 9), "b": (3, 9), "c": (30, 90)}, outcome="halt")
    assert same.difference.value == 0.0 and same.difference.ci_low == 0.0 < same.difference.ci_high
    assert same.ratio.value == 1.0 and same.ratio.ci_high == 1.0 > same.ratio.ci_low
    # small groups at 0 % and 100 % still get an interval that is not a point
    extreme = demographic_parity({"a": (0, 2), "b": (3, 3)}, outcome="halt")
    assert extreme.difference.value == 1.0 and extreme.difference.ci_low < 0.5
    assert extreme.ratio.value == 0.0 and extreme.ratio.ci_high > 0.3


def test_demographic_parity_undefined_cases_say_why() -> None:
    from audit.fairness import demographic_parity

    one = demographic_parity({"en": (3, 10)}, outcome="halt")
    assert one.difference.value is None and "fewer than 2 groups" in one.difference.method
    zero = demographic_parity({"en": (0, 10), "fi": (0, 4)}, outcome="halt")
    assert zero.difference.value == 0.0
    assert zero.ratio.value is None and zero.ratio.method == "undefined: every group's halt rate is 0"


def test_choose_reference() -> None:
    from audit.fairness import choose_reference

    sizes = {"en": 5, "fi": 9, "unknown": 20}
    assert choose_reference(sizes) == ("en", None)
    assert choose_reference(sizes, "fi") == ("fi", None)
    assert choose_reference({"eu": 3, "us": 7, "unknown": 50}) == (
        "us",
        "'en' is not one of these groups: compared with 'us', the largest group",
    )
    assert choose_reference({"eu": 3, "us": 7}, "xx")[0] == "us"
    assert choose_reference({"unknown": 4})[0] == "unknown"
    assert choose_reference({}, "fi") == ("fi", None)


# --- the interval methods against statsmodels ------------------------------------------------------------


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(3, 17, 9, 40), (0, 12, 5, 20), (7, 7, 2, 9)])
def test_rate_intervals_equal_statsmodels(k1: int, n1: int, k2: int, n2: int) -> None:
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

    assert wilson_interval(k1, n1) == pytest.approx(proportion_confint(k1, n1, method="wilson"), abs=1e-12)
    d = rate_difference(k1, n1, k2, n2)
    assert (d.ci_low, d.ci_high) == pytest.approx(
        confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff"), abs=1e-12
    )
    if 0 < k1 < n1 and 0 < k2 < n2:  # no zero-cell correction: the plain Katz log interval
        r = rate_ratio(k1, n1, k2, n2)
        assert (r.ci_low, r.ci_high) == pytest.approx(
            confint_proportions_2indep(k1, n1, k2, n2, method="log", compare="ratio"), abs=1e-12
        )
