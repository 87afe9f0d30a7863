"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Signs in, checks that the pages load, that the job filter works and that no console errors occur (a page
that broke its own Content-Security-Policy would log one), and saves screenshots under the test's tmp dir.
A reviewer approves and rejects held jobs with the keyboard and a bulk verdict; sign-out ends the session.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.helpers import free_port, make_settings, new_key
from tests.gateway.test_dashboard import seed_tenant
from tests.gateway.test_dashboard_security import held_job

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


WIDTH = 1366  # the most common laptop width: no page may need sideways scrolling at it


def shoot(page, shots: Path, name: str) -> None:
    """Save a full-page screenshot of `page` after checking that it has no horizontal overflow."""
    root = "document.documentElement"
    widths = page.evaluate(f"() => [{root}.scrollWidth, {root}.clientWidth]")
    assert widths[0] <= widths[1], f"{name}: {widths[0]} px wide in a {widths[1]} px window"
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def assert_shots(shots: Path, names: list[str]) -> None:
    """Every screenshot was written and holds an image; copied to /tmp for a human to look at."""
    for name in names:
        assert (shots / f"{name}.png").stat().st_size > 2000, name
    shutil.copytree(shots, Path("/tmp/emoe_dashboard_screenshots"), dirs_exist_ok=True)


@pytest.fixture
def server(module_pg_url: str, tmp_path):
    """The gateway (with the dashboard) served by uvicorn in a thread on a free port."""
    import uvicorn

    from gateway.app import EXTRA_ROUTER_MODULES, create_app
    from gateway.dashboard import router

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: dash\nversion: '7'\nfingerprint: " + "f" * 64 + "\nmode: enforce\nflag_at: 0.5\nhalt_at: 0.8\n"
    )
    settings = make_settings(module_pg_url, tmp_path, policy_path=policy)
    extra = [] if "gateway.dashboard" in EXTRA_ROUTER_MODULES else [router]
    app = create_app(settings, start_workers=False, extra_routers=extra)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_dashboard_in_chromium(server: str, module_pg_url: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    tenant, headers = new_key(module_pg_url, role="read")
    job_id = seed_tenant(module_pg_url, tenant, tmp_path)
    secret = headers["Authorization"].removeprefix("Bearer ")
    problems: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

            # 1. an unsigned visit lands on the sign-in form; signing in returns to the page asked for
            page.goto(f"{server}/dashboard/jobs")
            assert "/dashboard/login" in page.url
            shoot(page, shots, "login")
            page.fill("#key", secret)
            page.click("#sign-in")
            page.wait_for_url("**/dashboard/jobs")
            assert page.locator("tr.job").count() == 13
            shoot(page, shots, "jobs")

            # 2. the filter: halted jobs only
            page.select_option("#f-action", "halt")
            page.click("#apply")
            page.wait_for_url("**action=halt**")
            actions = page.locator("tr.job").evaluate_all("rows => rows.map(r => r.dataset.action)")
            assert actions == ["halt", "halt", "halt"]
            shoot(page, shots, "jobs-halted")

            # 3. a job with its image, which the browser loads through the cookie
            page.goto(f"{server}/dashboard/jobs/{job_id}")
            page.wait_for_function("() => document.querySelector('img.art')?.naturalWidth > 0")
            assert page.inner_text("#rule") == "thresholds"
            shown = page.eval_on_selector(
                "img.art", "i => [i.clientWidth, getComputedStyle(i).imageRendering]"
            )
            assert shown == [256, "pixelated"]  # an 8x8 image shown large, without smoothing
            shoot(page, shots, "job")

            # 4. overview and fairness
            page.goto(f"{server}/dashboard")
            assert page.locator("#over-time tr").count() > 1
            assert "dash@7#" in page.inner_text("#policy")
            assert page.locator("#chain").count() == 1 and page.locator("#awaiting").count() == 1
            shoot(page, shots, "overview")
            page.goto(f"{server}/dashboard?period=7d")
            assert page.input_value("#f-period") == "7d"
            shoot(page, shots, "overview-7d")
            page.goto(f"{server}/dashboard/fairness")
            assert page.locator("#fairness tr[data-group]").count() == 2
            shoot(page, shots, "fairness")
            page.goto(f"{server}/dashboard/fairness?group_by=team")
            shoot(page, shots, "fairness-by-label")
        finally:
            browser.close()

    assert problems == []
    assert_shots(shots, ["login", "jobs", "jobs-halted", "job", "overview", "overview-7d"])
    assert_shots(shots, ["fairness", "fairness-by-label"])


def test_review_in_chromium(server: str, module_pg_url: str, tmp_path: Path) -> None:
    """Sign in as a reviewer, reject one held job (keys n, r) and approve another (key a): the approved image
    is served to a read key, the rejected one stays 403; a bulk approval asks first; sign-out ends it all."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    from gateway.dashboard import DASHBOARD_CSP

    tenant, review = new_key(module_pg_url, role="review")
    _, read = new_key(module_pg_url, tenant, "read")
    first = held_job(module_pg_url, tmp_path, tenant, 1.2, prompt="a red bicycle")
    second = held_job(module_pg_url, tmp_path, tenant, 1.8, prompt="a blue boat")
    bulk = [
        held_job(module_pg_url, tmp_path, tenant, 1.5, language="fi", prompt=f"kissa {i}") for i in range(2)
    ]
    problems: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": 1000})
            page = context.new_page()
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

            page.goto(f"{server}/dashboard/review")
            assert "/dashboard/login" in page.url
            page.fill("#key", review["Authorization"].removeprefix("Bearer "))
            page.click("#sign-in")
            page.wait_for_url("**/dashboard/review")
            response = page.reload()
            headers = response.headers
            assert headers["content-security-policy"] == DASHBOARD_CSP
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"

            # the oldest held job, its image large and unsmoothed
            assert page.inner_text("#queue-count") == "4 awaiting a verdict"
            assert page.get_attribute("#current-job", "data-job") == str(first)
            assert "a red bicycle" in page.inner_text("#review-prompt")
            page.wait_for_function("() => document.querySelector('img.big')?.naturalWidth === 32")
            shown = page.eval_on_selector(
                "img.big", "i => [i.clientWidth, getComputedStyle(i).imageRendering]"
            )
            assert shown == [384, "pixelated"]
            shoot(page, shots, "review")

            # n opens the next job, r rejects it; back on the first (still leased to this reviewer) a approves
            page.keyboard.press("n")
            page.wait_for_url(f"**job={second}")
            assert page.get_attribute("#current-job", "data-job") == str(second)
            page.keyboard.press("r")
            page.wait_for_selector("#done")
            assert page.inner_text("#done") == "The job was rejected."
            assert page.get_attribute("#current-job", "data-job") == str(first)
            page.fill("#note", "a shows its caption")
            assert page.input_value("#note") == "a shows its caption"  # no shortcut while typing
            page.click("h1")
            page.keyboard.press("a")
            page.wait_for_function("() => document.querySelector('#done')?.innerText.includes('approved')")

            # bulk: approve every open Finnish job, after a confirmation (dismissed first: nothing happens)
            page.goto(f"{server}/dashboard/review?language=fi")
            assert page.inner_text("#bulk-n") == "2"
            shoot(page, shots, "review-bulk")
            answers = iter([False, True])
            asked: list[str] = []

            def answer(dialog) -> None:
                asked.append(dialog.message)
                dialog.accept() if next(answers) else dialog.dismiss()

            page.on("dialog", answer)
            page.click("#bulk-approve")
            page.wait_for_timeout(300)
            assert "language=fi" in page.url and "done" not in page.url
            page.click("#bulk-approve")
            page.wait_for_url("**done=bulk**")
            assert asked == ["Approve all 2 selected jobs? Their images will be served."] * 2
            assert page.inner_text("#queue-count") == "0 awaiting a verdict"

            # sign-out ends the session: neither this browser nor a copy of its cookie is signed in
            cookies = context.cookies()
            page.click("#sign-out")
            page.wait_for_url("**/dashboard/login")
            page.goto(f"{server}/dashboard/review")
            assert "/dashboard/login" in page.url
            copy = browser.new_context()
            copy.add_cookies(cookies)
            other = copy.new_page()
            other.goto(f"{server}/dashboard/review")
            assert "/dashboard/login" in other.url
            copy.close()
        finally:
            browser.close()

    assert problems == []
    assert_shots(shots, ["review", "review-bulk"])
    with httpx.Client(base_url=server, headers=read) as api:
        assert api.get(f"/v1/jobs/{first}/images/0").status_code == 200
        denied = api.get(f"/v1/jobs/{second}/images/0")
        assert denied.status_code == 403 and "rejected" in denied.json()["detail"]
        assert [api.get(f"/v1/jobs/{j}/images/0").status_code for j in bulk] == [200, 200]
        verdicts = api.get(f"/v1/jobs/{first}").json()
        assert (verdicts["status"], verdicts["review"]) == ("completed", "approved")
    keep = Path("/tmp/emoe_dashboard_screenshots")
    shutil.copytree(shots, keep, dirs_exist_ok=True)
