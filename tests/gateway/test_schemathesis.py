"""Property-based run over the OpenAPI schema (schemathesis): no generated request, valid or not, gets a 5xx
(except /readyz's documented 503: no worker runs here)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.gateway.helpers import make_settings, new_key

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(module_pg_url, tmp_path, mode) -> None:
    from gateway.app import create_app

    # no worker and no waiting: submitted jobs stay queued, /v1/score answers 202 at once
    app = create_app(make_settings(module_pg_url, tmp_path, max_wait_s=0), start_workers=False)
    _, auth = new_key(module_pg_url)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @hyp_settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call(headers={**auth, **(case.headers or {})})
            if response.status_code >= 500 and case.path != "/readyz":
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

        try:
            check()
        except Unsatisfiable:  # nothing invalid can be made for an operation without inputs
            assert mode == GenerationMode.NEGATIVE
    assert failures == []
