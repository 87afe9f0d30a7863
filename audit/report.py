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
from collections.abc import Sequence
from dataclasses import dataclass
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
    reference: str = fairness.DEFAULT_REFERENCE
    keywords: tuple[str, ...] = ()
    confidence: float = 0.95
    n_boot: int = fairness.DEFAULT_N_BOOT
    seed: int = 0
    min_group_size: int = fairness.DEFAULT_MIN_GROUP_SIZE
    bootstrap_max_n: int = fairness.DEFAULT_BOOTSTRAP_MAX_N
    tenant: str | None = None


def build_report(
    session: Session, options: ReportOptions | None = None, *, database: str = ""
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-safe dict with `ci_low`/`ci_high` beside each estimate."""
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
        notes=loaded.notes,
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
    stat_kw = {
        "confidence": opt.confidence,
        "n_boot": opt.n_boot,
        "seed": opt.seed,
        "bootstrap_max_n": opt.bootstrap_max_n,
    }
    table = fairness.group_stats(rec, reference=opt.reference, min_group_size=opt.min_group_size, **stat_kw)
    quartiles = {
        "all": [r.to_dict() for r in fairness.quartile_table(rec, key="all", **stat_kw)],
        "groups": {},
    }
    by_group = rec.group_indices()
    for name, idx in by_group.items():
        sub = rec.subset(idx)
        if len(sub) >= 4:
            quartiles["groups"][name] = [
                r.to_dict() for r in fairness.quartile_table(sub, key=name, **stat_kw)
            ]
    keywords = [
        {"keyword": kw, "groups": [s.to_dict() for s in fairness.keyword_lowest_quartile_share(rec, kw)]}
        for kw in opt.keywords
    ]
    correlation = fairness.score_quality_correlation(table, confidence=opt.confidence)

    # 2. what the report must say in words
    n_quality = int(np.sum(~np.isnan(rec.quality)))
    notes = [*notes, CAVEAT, *table.notes]
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
            "reference": opt.reference,
            "confidence": opt.confidence,
            "n_boot": opt.n_boot,
            "seed": opt.seed,
            "min_group_size": opt.min_group_size,
            "bootstrap_max_n": opt.bootstrap_max_n,
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
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    plots = render_plots(report)
    data = json.dumps(report, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
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
    fig.savefig(buf, format="png")
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


def _plot_distribution(report: dict[str, Any]) -> str:
    """Figure 5: the score distribution per group (density, so groups of any size compare)."""
    dist = report["score_distribution"]
    edges = np.asarray(dist["edges"])
    fig = _figure()
    ax = fig.subplots()
    for name in _plotted_groups(report):
        counts = np.asarray(dist["groups"][name], dtype=float)
        total = counts.sum()
        if total == 0:
            continue
        density = counts / (total * np.diff(edges))
        ax.stairs(density, edges, label=f"{name} (n={int(total)})", linewidth=1.6)
    ax.set_xlabel("score (√d · EU)")
    ax.set_ylabel("density")
    ax.set_title(f"Score distribution by {report['group_by']}")
    ax.legend(fontsize=8)
    return _png(fig)


def _errorbar_points(ests: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([np.nan if e["value"] is None else e["value"] for e in ests], dtype=float)
    lo = np.array([v if e["ci_low"] is None else e["ci_low"] for e, v in zip(ests, values, strict=True)])
    hi = np.array([v if e["ci_high"] is None else e["ci_high"] for e, v in zip(ests, values, strict=True)])
    return values, np.vstack([values - lo, hi - values])


def _plot_rates(report: dict[str, Any]) -> str:
    """Halt and flag rates per group with their Wilson intervals."""
    groups = report["fairness"]["groups"]
    fig = _figure(7.0, max(2.4, 0.32 * len(groups) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(groups))
    for offset, key, label in ((-0.15, "halt_rate", "halt rate"), (0.15, "flag_rate", "flag rate")):
        values, err = _errorbar_points([g[key] for g in groups])
        ax.errorbar(values, y + offset, xerr=err, fmt="o", capsize=3, label=label)
    ax.set_yticks(y, [g["group"] for g in groups])
    ax.invert_yaxis()
    ax.set_xlabel(f"rate ({int(100 * report['settings']['confidence'])} % Wilson interval)")
    ax.set_title(f"Halt and flag rates by {report['group_by']}")
    ax.legend(fontsize=8)
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
        ax.bar(x, counts, bottom=bottom, color=color, label=action, width=0.9)
        bottom += counts
    step = max(1, len(rows) // 8)
    ax.set_xticks(x[::step], [r["t"] for r in rows][::step], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"decisions per {report['over_time']['bucket']}")
    ax.set_title("Decisions over time")
    ax.legend(fontsize=8)
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
