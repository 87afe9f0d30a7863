"""The fairness report: build its data from the audit DB, render it as JSON, CSV or one self-contained HTML.

The JSON is the report: the HTML's tables and plots are drawn from the same dict (and the dict is embedded in
the HTML), so the two always agree. Plots are PNGs embedded as base64; the file needs nothing else to open.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from audit import fairness
from audit.report_queries import decisions_over_time, load_records, policy_counts

REPORT_VERSION = 1
FORMATS = ("html", "json", "csv")
HIST_BINS = 30
MAX_PLOTTED_GROUPS = 8
CAVEAT = (
    "The score measures disagreement between the ensemble's experts. Prompts that every expert is equally "
    "ignorant of (words none of them was trained on) can still score low: a low score is not proof that the "
    "model understood a prompt."
)
NO_QUALITY = (
    "No quality scores are stored for these decisions, so this report shows no quality per quartile and no "
    "score-quality correlation. Nothing has been estimated in their place."
)


@dataclass(frozen=True)
class ReportOptions:
    """What to report and how (the CLI's options)."""

    group_by: str = "language"
    since: datetime | None = None
    reference: str | None = None  # None: `en` when it is a group, else the largest group
    keywords: tuple[str, ...] = ()
    intervals: fairness.IntervalOptions = field(default_factory=fairness.IntervalOptions)
    min_group_size: int = fairness.DEFAULT_MIN_GROUP_SIZE
    tenant: str | None = None


def build_report(
    session: Session,
    options: ReportOptions | None = None,
    *,
    database: str = "",
    notes: Sequence[str] = (),
    describe_scoring: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-safe dict with `ci_low`/`ci_high` beside each estimate.

    `describe_scoring` (the composition root passes `emoe.config.describe_scoring`; audit does not import
    emoe) names each scoring configuration the decisions were measured with, in the report's "scoring"."""
    opt = options or ReportOptions()
    scope = {"since": opt.since, "tenant": opt.tenant}
    loaded = load_records(session, group_by=opt.group_by, with_prompts=bool(opt.keywords), **scope)
    return report_from_records(
        loaded.records,
        opt,
        database=database,
        over_time=decisions_over_time(session, **scope),
        policies=policy_counts(session, **scope),
        n_shadow=loaded.n_shadow,
        quality_metrics=loaded.quality_metrics,
        notes=[*notes, *loaded.notes],
        extra={
            "reviews": _review_sections(session, opt),
            "scoring": _scoring_configurations(session, opt, describe_scoring),
        },
    )


def _scoring_configurations(
    session: Session, opt: ReportOptions, describe: Callable[[dict[str, Any]], str] | None
) -> list[dict[str, Any]]:
    """Per scoring fingerprint in scope: its decisions and (with `describe`) the phrase that names it."""
    from sqlalchemy import func, select

    from audit.models import Decision

    stmt = select(Decision.fingerprint, func.count()).group_by(Decision.fingerprint)
    if opt.since is not None:
        stmt = stmt.where(Decision.created_at >= opt.since)
    if opt.tenant is not None:
        stmt = stmt.where(Decision.tenant == opt.tenant)
    out = []
    for fingerprint, n in session.execute(stmt.order_by(func.count().desc())).all():
        scoring = session.scalar(select(Decision.scoring).where(Decision.fingerprint == fingerprint).limit(1))
        text = describe({**(scoring or {}), "fingerprint": fingerprint}) if describe is not None else None
        out.append({"fingerprint": fingerprint, "decisions": int(n), "description": text})
    return out


def _review_sections(session: Session, opt: ReportOptions) -> dict[str, Any]:
    """The human-review sections (`audit.review_stats`), on the report's groups and intervals."""
    from audit.review_stats import build_review_sections

    return build_review_sections(
        session, group_by=opt.group_by, since=opt.since, tenant=opt.tenant, intervals=opt.intervals
    )


def report_from_records(
    rec: fairness.Records,
    options: ReportOptions | None = None,
    *,
    database: str = "",
    over_time: dict[str, Any] | None = None,
    policies: list[dict[str, Any]] | None = None,
    n_shadow: int = 0,
    quality_metrics: Sequence[str] = (),
    notes: Sequence[str] = (),
    title: str = "emoe-gate fairness report",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of records from anywhere (the audit DB, or `eval multilingual`'s stored results)."""
    opt = options or ReportOptions()
    over_time = over_time or {"bucket": "day", "rows": []}
    policies = policies or []
    # 1. the per-group statistics and the paper's analyses
    intervals = opt.intervals
    by_group = rec.group_indices()
    reference, reference_note = fairness.choose_reference(
        {name: len(idx) for name, idx in by_group.items()}, opt.reference
    )
    table = fairness.group_stats(
        rec, reference=reference, intervals=intervals, min_group_size=opt.min_group_size
    )
    quartiles = {
        "all": [r.to_dict() for r in fairness.quartile_table(rec, intervals=intervals, key="all")],
        "groups": {},
    }
    for name, idx in by_group.items():
        sub = rec.subset(idx)
        if len(sub) >= 4:
            quartiles["groups"][name] = [
                r.to_dict() for r in fairness.quartile_table(sub, intervals=intervals, key=name)
            ]
    keywords = [
        {
            "keyword": kw,
            "groups": [
                s.to_dict()
                for s in fairness.keyword_lowest_quartile_share(rec, kw, confidence=intervals.confidence)
            ],
        }
        for kw in opt.keywords
    ]
    correlation = fairness.score_quality_correlation(table, confidence=intervals.confidence)

    # 2. what the report must say in words
    n_quality = int(np.sum(~np.isnan(rec.quality)))
    notes = [*notes, CAVEAT, *table.notes]
    if reference_note:
        notes.append(f"Reference group: {reference_note}.")
    if n_shadow:
        notes.append(
            f"{n_shadow} decisions were made in shadow mode: their halt and flag rates count what the "
            "policy would have done."
        )
    if len(rec) == 0:
        notes.append("No decisions match these filters.")
    small = [g.group for g in table.groups if g.n < opt.min_group_size]
    if small:
        notes.append(
            f"Groups with fewer than {opt.min_group_size} decisions ({', '.join(small)}): too few to say "
            "anything; their rows are shown but should not be compared."
        )
    return {
        "report": title,
        "version": REPORT_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": database,
        "group_by": opt.group_by,
        "since": opt.since.isoformat() if opt.since else None,
        "tenant": opt.tenant,
        "settings": {
            "reference": reference,
            "reference_requested": opt.reference,
            "confidence": opt.intervals.confidence,
            "n_boot": opt.intervals.n_boot,
            "seed": opt.intervals.seed,
            "min_group_size": opt.min_group_size,
            "bootstrap_max_n": opt.intervals.bootstrap_max_n,
            "keywords": list(opt.keywords),
        },
        "n_decisions": len(rec),
        "n_shadow": n_shadow,
        "quality": {
            "available": n_quality > 0,
            "n": n_quality,
            "metrics": list(quality_metrics),
            "note": None if n_quality else NO_QUALITY,
        },
        "notes": notes,
        "fairness": table.to_dict(),
        "quartiles": quartiles,
        "keywords": keywords,
        "correlation": correlation.to_dict(),
        "score_distribution": _histograms(rec),
        "over_time": over_time,
        "policies": policies,
        **(extra or {}),
    }


def _histograms(rec: fairness.Records) -> dict[str, Any]:
    """Score histograms per group on common bins (figure 5 is drawn from these counts)."""
    if len(rec) == 0:
        return {"edges": [], "groups": {}}
    lo, hi = float(rec.score.min()), float(rec.score.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    groups = {}
    for name, idx in rec.group_indices().items():
        counts, _ = np.histogram(rec.score[idx], bins=edges)
        groups[name] = counts.tolist()
    return {"edges": edges.tolist(), "groups": groups}


# --- rendering ---


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


CSV_COLUMNS = (
    "group",
    "n",
    "halts",
    "flags",
    "is_reference",
    "mean_score",
    "median_score",
    "halt_rate",
    "flag_rate",
    "mean_quality",
    "disparity.mean_score_difference",
    "disparity.mean_score_ratio",
    "disparity.halt_rate_difference",
    "disparity.halt_rate_ratio",
    "disparity.flag_rate_difference",
    "disparity.flag_rate_ratio",
)


def render_csv(report: dict[str, Any]) -> str:
    """The per-group fairness table, one row per group; each estimate as value, ci_low, ci_high columns."""
    header = []
    for col in CSV_COLUMNS:
        if col in ("group", "n", "halts", "flags", "is_reference"):
            header.append(col)
        else:
            header += [col, f"{col}.ci_low", f"{col}.ci_high"]
    header.append("warnings")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for g in report["fairness"]["groups"]:
        row: list[Any] = []
        for col in CSV_COLUMNS:
            if col in ("group", "n", "halts", "flags", "is_reference"):
                row.append(g[col])
                continue
            parts = col.split(".")
            est = g.get(parts[0]) if len(parts) == 1 else (g["disparity"] or {}).get(parts[1])
            est = est or {"value": None, "ci_low": None, "ci_high": None}
            row += ["" if est[k] is None else repr(est[k]) for k in ("value", "ci_low", "ci_high")]
        row.append(" | ".join(g["warnings"]))
        writer.writerow(row)
    return out.getvalue()


def fmt(value: Any, digits: int = 4) -> str:
    """How the HTML shows a number: 4 significant digits; '–' for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_ci(est: dict[str, Any] | None) -> str:
    """'[low, high]' or '–'."""
    if not est or est.get("ci_low") is None or est.get("ci_high") is None:
        return "–"
    return f"[{fmt(est['ci_low'])}, {fmt(est['ci_high'])}]"


LABELS = {
    "mean_score": "mean score",
    "median_score": "median score",
    "halt_rate": "halt rate",
    "flag_rate": "flag rate",
    "mean_quality": "mean quality",
    "mean_score_difference": "Δ mean score",
    "mean_score_ratio": "mean score ratio",
    "halt_rate_difference": "Δ halt rate",
    "halt_rate_ratio": "halt ratio",
    "flag_rate_difference": "Δ flag rate",
    "flag_rate_ratio": "flag ratio",
}
MINUS = "\u2212"


def _fmt_kind(value: float, kind: str, *, sign: bool = True) -> str:
    """A number as the pages show it: `pct` a rate in percent, `pp` a difference of rates in percentage
    points, `ratio` two decimals, `num` four significant digits."""
    if kind == "pct":
        text = f"{100 * value:.1f}"
    elif kind == "pp":
        text = f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"
    elif kind == "ratio":
        text = f"{value:.2f}"
    else:
        text = fmt(value)
    return text.replace("-", MINUS)


def fmt_pct(value: float | None) -> str:
    """A rate in percent ('12.5 %'), '–' for missing: the dashboard and the report show rates this way."""
    return "–" if value is None else _fmt_kind(value, "pct") + " %"


def missing_reason(est: dict[str, Any] | None) -> str | None:
    """Why an estimate or its interval is missing, from its method (e.g. 'the reference rate is 0')."""
    if not est:
        return None
    method = str(est.get("method") or "")
    for marker in ("no interval: ", "undefined: ", "none: "):
        if marker in method:
            return method.split(marker, 1)[1]
    return method or None


def cell(est: dict[str, Any] | None, kind: str = "num", absent: str = "not computed") -> Any:
    """A table cell's HTML: the value and, under it, its interval; '–' with the reason as a tooltip."""
    from markupsafe import Markup, escape

    unit = {"pct": " %", "pp": " pp"}.get(kind, "")
    if est is None or est.get("value") is None:
        why = absent if est is None else (missing_reason(est) or absent)
        return Markup('<span class="na" title="{}">–</span>').format(why)
    value = escape(_fmt_kind(est["value"], kind) + unit)
    if est.get("ci_low") is None or est.get("ci_high") is None:
        why = missing_reason(est) or "no interval"
        return Markup('{}<br><span class="ci na" title="{}">no interval</span>').format(value, why)
    lo, hi = (_fmt_kind(est[k], kind) for k in ("ci_low", "ci_high"))
    return Markup('{}<br><span class="ci">[{}, {}]</span>').format(value, lo, hi)


def missing_notes(groups: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The footnote under a table: each reason a '–' stands for there, with the groups it applies to."""
    found: dict[str, list[str]] = {}
    for g in groups:
        for key in keys:
            if key in g:
                est = g[key]
            elif g.get("disparity"):
                est = g["disparity"].get(key)
            else:
                continue  # the reference row, or no reference at all: said in the cell
            why = missing_reason(est) if est and (est["value"] is None or est["ci_low"] is None) else None
            if why:
                found.setdefault(f"{LABELS.get(key, key)}: {why}", []).append(g["group"])
    return [f"{what} ({', '.join(names)})" for what, names in found.items()]


def embeddable_json(value: Any) -> str:
    """JSON that can sit inside a <script> element: `<`, `>` and `&` as \\u escapes, so that no stored text
    (a label `<!--<script>` or `</script>`) can end or change the element."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def rates_svg(table: dict[str, Any]) -> Any:
    """The dashboard's chart (SVG, no script or style): each group's halt and flag rate with its interval,
    and beside it the difference from the reference group; groups too small to compare are hollow."""
    from markupsafe import Markup, escape

    groups = table["groups"]
    ref = table["reference"]
    row, top, label_w, panel_w, gap = 24, 34, 150, 300, 40
    height = top + row * len(groups) + 36
    width = label_w + 2 * panel_w + gap + 110
    bounds = [
        abs(e[k])
        for g in groups
        for key in ("halt_rate_difference", "flag_rate_difference")
        for e in [(g["disparity"] or {}).get(key)]
        if e
        for k in ("value", "ci_low", "ci_high")
        if e[k] is not None
    ]
    span = max(0.1, math.ceil(10 * max(bounds, default=0.1)) / 10)  # symmetric, in steps of 10 pp
    x_rate = lambda v: label_w + panel_w * v  # noqa: E731
    x_diff = lambda v: label_w + panel_w + gap + panel_w * (v + span) / (2 * span)  # noqa: E731
    out = [
        f'<svg id="rates-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="halt and flag rates by group">',
        f'<text x="{label_w}" y="14" font-size="12" font-weight="600">halt and flag rate, %</text>',
        f'<text x="{label_w + panel_w + gap}" y="14" font-size="12" font-weight="600">'
        f"difference from {escape(ref)}, percentage points</text>",
    ]
    axis_y = top + row * len(groups)
    for frac in (0, 0.25, 0.5, 0.75, 1):
        x = x_rate(frac)
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle">{100 * frac:.0f}</text>'
        )
    for frac in (-1, -0.5, 0, 0.5, 1):
        x = x_diff(frac * span)
        colour = "#888" if frac == 0 else "#eee"
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{axis_y}" stroke="{colour}"/>')
        text = f"{100 * frac * span:+.0f}".replace("-", MINUS).replace("+0", "0")
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle">{text}</text>')
    for i, g in enumerate(groups):
        y = top + row * i + row / 2
        small = g["n"] < table["min_group_size"]
        name = f"{g['group']} (n={g['n']})" + (" · ref." if g["group"] == ref else "")
        grey = ' fill="#888"' if small else ""
        out.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end"{grey}>'
            f"{escape(name)}</text>"
        )
        for offset, key, colour in ((-4, "halt", "#c0392b"), (4, "flag", "#e0a526")):
            for est, x_of in (
                (g[f"{key}_rate"], x_rate),
                ((g["disparity"] or {}).get(f"{key}_rate_difference"), x_diff),
            ):
                if not est or est["value"] is None:
                    continue
                yy = y + offset
                if est["ci_low"] is not None:
                    out.append(
                        f'<line x1="{x_of(est["ci_low"]):.1f}" y1="{yy:.1f}" x2="{x_of(est["ci_high"]):.1f}" '
                        f'y2="{yy:.1f}" stroke="{colour}" stroke-width="1.5"/>'
                    )
                fill = "#fff" if small else colour
                tip = f"{g['group']}: {key} " + (
                    f"rate {_fmt_kind(est['value'], 'pct')} %"
                    if x_of is x_rate
                    else f"Δ {_fmt_kind(est['value'], 'pp')} pp"
                )
                cx = x_of(est["value"])
                out.append(
                    f'<circle cx="{cx:.1f}" cy="{yy:.1f}" r="4" fill="{fill}" stroke="{colour}" '
                    f'stroke-width="1.5"><title>{escape(tip)}</title></circle>'
                )
    lx = label_w + 2 * panel_w + gap + 14
    for j, (label, colour, fill) in enumerate(
        (
            ("halt rate", "#c0392b", "#c0392b"),
            ("flag rate", "#e0a526", "#e0a526"),
            ("too few", "#888", "#fff"),
        )
    ):
        ly = top + 16 * j
        out.append(f'<circle cx="{lx}" cy="{ly}" r="4" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{lx + 9}" y="{ly + 4}" font-size="11">{label}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: tables and embedded PNG plots, all drawn from `report`."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = fmt
    env.filters["ci"] = fmt_ci
    env.filters["pct"] = fmt_pct
    env.filters["cell"] = cell
    env.globals["missing_notes"] = missing_notes
    plots = render_plots(report)
    data = embeddable_json(report)
    return env.get_template("report.html.j2").render(r=report, plots=plots, data_json=data)


# --- plots (matplotlib, no pyplot global state) ---


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    # fixed margins: constrained layout costs ~0.5 s per figure on a busy 2-core machine
    fig = Figure(figsize=(width, height), dpi=90)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.18)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # tight: the saved image grows to hold legends placed beside the axes and long tick labels
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.08)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plotted_groups(report: dict[str, Any]) -> list[str]:
    """The reference group and the largest others (a plot with 90 lines says nothing)."""
    groups = sorted(report["fairness"]["groups"], key=lambda g: -g["n"])
    ref = report["fairness"]["reference"]
    names = [g["group"] for g in groups if g["group"] == ref]
    names += [g["group"] for g in groups if g["group"] != ref][: MAX_PLOTTED_GROUPS - len(names)]
    return names


def render_plots(report: dict[str, Any]) -> dict[str, str | None]:
    """Each plot as a data: URI, or None where the report has nothing to draw."""
    plots: dict[str, str | None] = dict.fromkeys(
        ("distribution", "quartile_quality", "correlation", "rates", "time")
    )
    if report["n_decisions"] == 0:
        return plots
    plots["distribution"] = _plot_distribution(report)
    plots["rates"] = _plot_rates(report)
    if report["over_time"]["rows"]:
        plots["time"] = _plot_time(report)
    if report["quality"]["available"]:
        plots["quartile_quality"] = _plot_quartile_quality(report)
        if report["correlation"]["n_groups"] >= 2:
            plots["correlation"] = _plot_correlation(report)
    return plots


def _legend_beside(ax: Any) -> None:
    """The legend right of the axes, where it can cover no data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _plot_distribution(report: dict[str, Any]) -> str:
    """Figure 5: the score distribution per group, as counts of decisions per score bin."""
    dist = report["score_distribution"]
    edges = np.asarray(dist["edges"])
    fig = _figure()
    ax = fig.subplots()
    for name in _plotted_groups(report):
        counts = np.asarray(dist["groups"][name], dtype=float)
        if counts.sum() == 0:
            continue
        ax.stairs(counts, edges, label=f"{name} (n={int(counts.sum())})", linewidth=1.6)
    ax.set_xlabel(f"score (√d · EU), bins of width {fmt(float(edges[1] - edges[0]), 3)}")
    ax.set_ylabel("decisions (count per bin)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Score distribution by {report['group_by']}")
    _legend_beside(ax)
    return _png(fig)


def _errorbar_points(ests: Sequence[dict[str, Any] | None]) -> tuple[np.ndarray, np.ndarray]:
    ests = [e or {"value": None, "ci_low": None, "ci_high": None} for e in ests]
    values = np.array([np.nan if e["value"] is None else e["value"] for e in ests], dtype=float)
    lo = np.array([v if e["ci_low"] is None else e["ci_low"] for e, v in zip(ests, values, strict=True)])
    hi = np.array([v if e["ci_high"] is None else e["ci_high"] for e, v in zip(ests, values, strict=True)])
    return values, np.vstack([values - lo, hi - values])


def _plot_rates(report: dict[str, Any]) -> str:
    """Left: halt and flag rates per group (Wilson intervals); right: their difference from the reference
    group (Newcombe intervals). Groups too small to compare are drawn hollow."""
    from matplotlib.lines import Line2D

    groups = report["fairness"]["groups"]
    ref = report["fairness"]["reference"]
    fig = _figure(9.0, max(2.4, 0.34 * len(groups) + 1.3))
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(groups))
    small = np.array([g["n"] < report["settings"]["min_group_size"] for g in groups], dtype=bool)
    handles = []
    for offset, key, color in ((-0.15, "halt", "#c0392b"), (0.15, "flag", "#e0a526")):
        rates = [g[f"{key}_rate"] for g in groups]
        diffs = [(g["disparity"] or {}).get(f"{key}_rate_difference") for g in groups]
        for ax, ests in ((left, rates), (right, diffs)):
            values, err = _errorbar_points(ests)
            for mask, face in ((~small, color), (small, "white")):
                if mask.any():
                    ax.errorbar(
                        100 * values[mask], y[mask] + offset, xerr=100 * err[:, mask], fmt="o", capsize=3,
                        color=color, markerfacecolor=face,
                    )  # fmt: skip
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, label=f"{key} rate"))
    if small.any():
        handles.append(
            Line2D([], [], marker="o", linestyle="", color="#777", markerfacecolor="white", label="too few")
        )
    right.axvline(0, color="#555", linewidth=0.8)
    labels = [f"{g['group']} (n={g['n']})" + (" · ref." if g["group"] == ref else "") for g in groups]
    left.set_yticks(y, labels)
    left.invert_yaxis()
    conf = round(100 * report["settings"]["confidence"])
    left.set_xlim(-3, 103)
    left.set_xlabel(f"rate in % ({conf} % Wilson interval)")
    right.set_xlabel(f"− {ref}, percentage points ({conf} % Newcombe)")
    left.set_title(f"Halt and flag rates by {report['group_by']}", fontsize=10)
    right.set_title(f"Difference from the reference group ({ref})", fontsize=10)
    right.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.subplots_adjust(left=0.16, right=0.86, wspace=0.08, top=0.88, bottom=0.16)
    return _png(fig)


def _plot_time(report: dict[str, Any]) -> str:
    """Decisions over time, stacked by action."""
    rows = report["over_time"]["rows"]
    fig = _figure(7.0, 3.0)
    ax = fig.subplots()
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for action, color in (("continue", "#4c9a2a"), ("flag", "#e0a526"), ("halt", "#c0392b")):
        counts = np.array([r[action] for r in rows], dtype=float)
        ax.bar(x, counts, bottom=bottom, color=color, label=action, width=0.8)
        bottom += counts
    ax.set_xlim(-0.6, max(len(rows), 6) - 0.4)  # one bucket is one bar, not the whole width
    step = max(1, len(rows) // 8)
    rotate = len(rows) > 3
    labels = [r["t"] for r in rows][::step]
    ax.set_xticks(
        x[::step], labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=7
    )
    ax.set_ylabel(f"decisions per {report['over_time']['bucket']}")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Decisions over time")
    _legend_beside(ax)
    return _png(fig)


def _plot_quartile_quality(report: dict[str, Any]) -> str:
    """Figure 4: mean quality per score quartile, with its interval and the overall mean as a red line."""
    rows = report["quartiles"]["all"]
    fig = _figure(5.5, 3.4)
    ax = fig.subplots()
    values, err = _errorbar_points([r["mean_quality"] for r in rows])
    x = np.arange(1, 5)
    ax.bar(x, np.nan_to_num(values), yerr=np.nan_to_num(err), capsize=4, color="#5b7db1")
    total = sum(r["quality_n"] for r in rows)
    if total:
        overall = sum((r["mean_quality"]["value"] or 0) * r["quality_n"] for r in rows) / total
        ax.axhline(overall, color="red", linewidth=1.2)
    ax.set_xticks(x, [f"Q{q}" for q in x])
    ax.set_xlabel("score quartile (Q1 = lowest uncertainty)")
    ax.set_ylabel(", ".join(report["quality"]["metrics"]) or "quality")
    ax.set_title("Quality per score quartile")
    return _png(fig)


def _plot_correlation(report: dict[str, Any]) -> str:
    """Figure 7: groups' mean score against mean quality, point size by count."""
    corr = report["correlation"]
    pts = corr["points"]
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    x = np.array([p["mean_score"] for p in pts])
    y = np.array([p["mean_quality"] for p in pts])
    sizes = np.array([p["n"] for p in pts], dtype=float)
    ax.scatter(x, y, s=20 + 180 * sizes / sizes.max(), alpha=0.7)
    for p in pts:
        ax.annotate(
            p["group"],
            (p["mean_score"], p["mean_quality"]),
            fontsize=8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    r = corr["r"]
    title = "Group mean score vs mean quality"
    if r["value"] is not None:
        title += f": r = {fmt(r['value'], 3)} {fmt_ci(r)}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("mean score")
    ax.set_ylabel("mean quality")
    return _png(fig)


def write_report(report: dict[str, Any], fmt_name: str, out: Path) -> Path:
    """Render `report` as `fmt_name` into `out` (parent folders are created)."""
    if fmt_name not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt_name!r}")
    render = {"json": render_json, "csv": render_csv, "html": render_html}[fmt_name]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report), encoding="utf-8")
    return out
