"""The HTML report in a real headless Chromium (Debian's `chromium`, driven by Playwright).

At 1366 px the main table (halt and flag rates, their disparity against the reference group) fits its
column without sideways scrolling, every plot loads, and the full table opens behind its toggle. Screenshots
are saved under the test's tmp dir (and copied to /tmp/emoe_report_screenshots for a human to look at).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit import db
from audit.report import ReportOptions, build_report, render_html
from tests.audit.report_seed import seed
from tests.gateway.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser]

LANGUAGES = (("en", 60, 0.05), ("es", 45, 0.3), ("de", 40, 0.5), ("fr", 33, 0.4), ("it", 20, 0.7),
             ("fi", 12, 0.9), ("nl", 4, 0.0))  # fmt: skip


def _rows() -> list[dict]:
    rows = []
    for lang, n, p_halt in LANGUAGES:
        for i in range(n):
            u = (i * 0.618) % 1.0  # spread, deterministic
            action = "halt" if u < p_halt else ("flag" if u < p_halt + 0.15 else "continue")
            # every decision in one hour: the over-time chart has a single bucket
            rows.append(
                {"language": lang, "score": 0.2 + p_halt + 0.01 * i, "action": action, "minutes": i % 50}
            )
    return rows


def test_report_main_table_fits_at_1366_px(sqlite_url: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    db.ensure_schema(sqlite_url)
    seed(db.get_engine(sqlite_url), _rows())
    with db.session_scope(sqlite_url) as session:
        report = build_report(session, ReportOptions(), database="test")
    db.dispose_engine(sqlite_url)
    assert len(report["over_time"]["rows"]) == 1
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(html.as_uri())
            page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
            widths = page.evaluate(
                """() => { const t = document.querySelector('#disparity');
                     return {table: t.scrollWidth, container: t.parentElement.clientWidth,
                             page: document.documentElement.scrollWidth, view: window.innerWidth}; }"""
            )
            assert widths["table"] <= widths["container"], widths
            assert widths["page"] <= widths["view"], widths  # nothing makes the page scroll sideways
            assert page.locator("#disparity tr[data-group]").count() == len(LANGUAGES)
            assert page.locator("#parity tr[data-outcome]").count() == 2
            # the '–' cells say why: nl halts nothing... and the reference row has no disparity of its own
            titles = page.locator("#disparity tr[data-group='en'] .na").evaluate_all(
                "cells => cells.map(c => c.title)"
            )
            assert titles and set(titles) == {"this is the reference group"}
            page.screenshot(path=str(shots / "report.png"), full_page=True)
            # the full table is behind its toggle
            assert not page.locator("#fairness").is_visible()
            page.click("#full-table summary")
            assert page.locator("#fairness").is_visible()
            page.screenshot(path=str(shots / "report-full-table.png"), full_page=True)
        finally:
            browser.close()

    assert problems == []
    for name in ("report.png", "report-full-table.png"):
        assert (shots / name).stat().st_size > 20000
    shutil.copytree(shots, Path("/tmp/emoe_report_screenshots"), dirs_exist_ok=True)
