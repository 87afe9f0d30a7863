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


def _cgroup(tmp_path, membership: str, files: dict[str, str]):
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return proc, root


@pytest.mark.parametrize(
    ("membership", "files", "cpus"),
    [
        # cgroup v2, the process's own cgroup (a Kubernetes pod's limits.cpu: 4)
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "400000 100000\n"}, 4),
        # a fraction of a CPU rounds down, never below one thread
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1),
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "50000 100000\n"}, 1),
        # a container's own namespace: its cgroup is the mount's root (`docker run --cpus 2`)
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # cgroup v1, the cpu controller mounted with cpuacct
        (
            "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            3,
        ),
        (
            "3:cpu,cpuacct:/\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            None,
        ),
        # no quota files at all, or a line that is not a cgroup's
        ("0::/\n", {}, None),
        ("garbage\n", {}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_in_whole_cpus(tmp_path, membership, files, cpus) -> None:
    from workers.runtime import cgroup_cpu_limit

    proc, root = _cgroup(tmp_path, membership, files)
    assert cgroup_cpu_limit(proc, root) == cpus


def test_a_worker_takes_no_more_torch_threads_than_its_cpu_quota(monkeypatch) -> None:
    """A quota leaves every core visible: a 2-CPU container on a 16-core host must not run 16 threads."""
    from workers import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 2)
    assert runtime.default_threads(1) == 2
    assert runtime.default_threads(2) == 1
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.default_threads(2) == 8
