"""A worker refuses to start with a policy calibrated for another scoring configuration."""

from __future__ import annotations

import pytest

from settings import Settings


def test_runtime_refuses_a_policy_of_another_fingerprint(tmp_path) -> None:
    from workers.runtime import load_runtime

    # the bundled policy is calibrated for the shipped reference ensemble, not for the tiny random one
    settings = Settings(home=tmp_path, ensemble="tiny")
    with pytest.raises(RuntimeError, match=r"calibrated for scoring fingerprint .* EMOE_POLICY_PATH"):
        load_runtime(settings)


def test_runtime_loads_with_the_policy_of_its_ensemble(tmp_path, tiny_policy_file) -> None:
    from workers.runtime import load_runtime

    runtime = load_runtime(Settings(home=tmp_path, ensemble="tiny", policy_path=tiny_policy_file))
    assert runtime.policy.name == "test-tiny"
