"""The dashboard's fairness page over a real PostgreSQL database: reference choice, rates, parity, '–'."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from audit.db import get_engine
from tests.audit.report_seed import seed
from tests.gateway.helpers import new_key
from tests.gateway.test_dashboard import client, seed_tenant  # noqa: F401 (the fixture)

pytestmark = pytest.mark.postgres


def _options(html: str) -> list[tuple[str, bool]]:
    select = re.search(r'<select name="reference" id="f-reference">(.*?)</select>', html, re.S).group(1)
    return [(v, bool(sel)) for v, sel in re.findall(r'<option value="([^"]+)"( selected)?>', select)]


def test_fairness_page_leads_with_rates_and_disparity(
    client: TestClient,  # noqa: F811
    module_pg_url: str,
    tmp_path,
) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    seed_tenant(module_pg_url, tenant, tmp_path)  # en: 9 decisions (2 halts, 2 flags), fi: 4 (1 halt)
    page = client.get("/dashboard/fairness", headers=headers)
    assert page.status_code == 200
    html = page.text
    assert _options(html) == [("en", True), ("fi", False)]  # the groups that exist, en chosen
    assert 'id="rates-chart"' in html and 'id="parity"' in html and '<details id="full-table">' in html
    fi = re.search(r'<tr data-group="fi" class="small">(.*?)</tr>', html, re.S).group(1)
    assert "25.0 %" in fi  # fi halts 1 of 4: a rate in percent, as in the HTML report
    assert "+2.8 pp" in fi and "\u221222.2 pp" in fi  # halts 1/4 − 2/9, flags 0/4 − 2/9
    assert html.count('title="this is the reference group"') == 4 + 6  # its rows in both tables
    halts = re.search(r'<tr data-outcome="halt">(.*?)</tr>', html, re.S).group(1)
    assert "+2.8 pp" in halts and '<td class="l">fi</td><td class="l">en</td>' in halts  # highest, lowest

    # another reference from the list; then a label grouping, where `en` is not a value
    assert _options(client.get("/dashboard/fairness?reference=fi", headers=headers).text)[1] == ("fi", True)
    seed(
        get_engine(module_pg_url),
        [{"tenant": tenant, "language": "en", "score": 0.3, "action": a, "labels": {"region": r}}
         for r, a in [("eu", "halt"), ("eu", "continue"), ("us", "continue")]],
    )  # fmt: skip
    by_region = client.get("/dashboard/fairness?group_by=region&reference=en", headers=headers).text
    # eu (2) is the largest labelled group: 13 decisions without the label are not a reference
    assert _options(by_region) == [("eu", True), ("unknown", False), ("us", False)]
    assert "&#39;en&#39; is not one of these groups: compared with &#39;eu&#39;" in by_region
    us = client.get("/dashboard/fairness?group_by=region&reference=us", headers=headers).text
    assert _options(us)[2] == ("us", True) and 'id="reference-note"' not in us


def test_fairness_page_of_a_tenant_without_decisions(client: TestClient, module_pg_url: str) -> None:  # noqa: F811
    _, headers = new_key(module_pg_url, role="read")
    page = client.get("/dashboard/fairness", headers=headers)
    assert page.status_code == 200
    assert "0 decisions" in page.text and _options(page.text) == []
    assert 'title="fewer than 2 groups to compare"' in page.text and 'id="rates-chart"' not in page.text
