"""What a worker process loads once: the ensemble, the policy in force and its scoring configuration."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The loaded model and policy. The gate always scores with `gate_config` (the configuration the
    policy was calibrated for); a job's own seed, steps, guidance and size are used for rendering only."""

    ensemble: Any
    policy: Any
    gate_config: Any

    def render_config(self, params: dict[str, Any], negative_prompt: str) -> Any:
        changes = {k: params[k] for k in ("seed", "steps", "guidance") if params.get(k) is not None}
        for side in ("height", "width"):
            if params.get(side) is not None:
                changes[side] = params[side]
        return self.gate_config.replace(negative_prompt=negative_prompt or "", **changes)

    def size_problem(self, height: int | None, width: int | None) -> str | None:
        return self.ensemble.size_problem(
            height or self.ensemble.default_height, width or self.ensemble.default_width
        )


def cgroup_cpu_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The whole CPUs a cgroup CPU quota allows this process (`docker run --cpus`, Kubernetes `limits.cpu`),
    rounded down, at least 1; None without a quota. Unlike a cpuset, a quota leaves every core visible, and a
    torch thread per visible core on a 2-CPU quota spends most of its time throttled."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: "max 100000" or "<quota> <period>" in cpu.max
            files = [(root / relative / "cpu.max", None), (root / "unified" / relative / "cpu.max", None)]
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us
            folder = root / controllers
            files = [(folder / relative / "cpu.cfs_quota_us", folder / relative / "cpu.cfs_period_us")]
        else:
            continue
        for quota_file, period_file in files:
            try:
                if period_file is None:
                    quota, period = quota_file.read_text().split()[:2]
                else:
                    quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
            except (OSError, ValueError):
                continue
            if quota not in ("max", "-1") and int(period) > 0:
                limits.append(max(1, int(quota) // int(period)))
            break
    return min(limits) if limits else None


def default_threads(processes: int) -> int:
    """The cores this process may use (its CPU affinity, as a container's cpuset sets it, and at most its
    cgroup CPU quota) shared among `processes` worker processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores // max(1, processes))


def set_torch_threads(settings: Settings, processes: int = 1) -> int:
    """Give torch `EMOE_TORCH_THREADS` threads, else this process's share of the cores; returns the count."""
    import torch

    threads = settings.torch_threads or default_threads(processes)
    torch.set_num_threads(threads)
    # only settable before the first inter-op work; the intra-op count is what matters
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    log.info("torch: %d thread(s) in this worker process", threads)
    return threads


def check_sources(settings: Settings) -> str | None:
    """What keeps the runtime from loading that can be told without torch (the policy file, the ensemble's
    path), as one line; None if nothing. The worker's main process checks this: it must not load torch."""
    from policies import PolicyError, bundled_policy_path, load_policy

    try:
        load_policy(settings.policy_path or bundled_policy_path(settings.dtype))
    except PolicyError as exc:
        return f"policy: {exc}"
    spec = settings.ensemble
    if spec not in ("default", "tiny") and not Path(spec).expanduser().exists():
        return (
            f"ensemble: path not found: {spec} (expected tiny, default, a segmoe YAML or a checkpoint folder)"
        )
    return None


def load_runtime(settings: Settings) -> Runtime:
    """Load the ensemble and policy named by the settings (torch is imported here, not at module import)."""
    from emoe import default_score_config, load_ensemble, scoring_fingerprint
    from policies import bundled_policy_path, load_policy

    ensemble = load_ensemble(settings.ensemble, device=settings.device, dtype=settings.dtype)
    policy_path = settings.policy_path or bundled_policy_path(settings.dtype)
    policy = load_policy(policy_path)
    config = default_score_config(ensemble)
    # Refuse to start rather than fail every job: a policy decides only scores of the configuration it was
    # calibrated for.
    fingerprint = scoring_fingerprint(config, ensemble)
    if fingerprint != policy.fingerprint:
        raise RuntimeError(
            f"policy {policy.name} v{policy.version} ({policy_path}) was calibrated for scoring fingerprint "
            f"{policy.fingerprint[:12]}, but ensemble {settings.ensemble!r} in {settings.dtype} scores with "
            f"{fingerprint[:12]}: calibrate a policy for this ensemble and dtype "
            f"(`EMOE_DTYPE={settings.dtype} emoe-gate calibrate --prompts FILE --ensemble ... "
            "--out policy.yaml`) "
            "and set EMOE_POLICY_PATH, or use the ensemble and dtype the policy names (bundled policies: the "
            "default ensemble in float32 and float16)"
        )
    from audit.language import warm_up

    warm_up()  # the gate stage detects each job's language (the gateway does not)
    log.info(
        "worker runtime: ensemble %s (%d experts), policy %s v%s",
        ensemble.name,
        ensemble.num_experts,
        policy.name,
        policy.version,
    )
    return Runtime(ensemble=ensemble, policy=policy, gate_config=config)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings) -> Runtime:
    """The process's runtime, loaded on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = load_runtime(settings)
        return _runtime


def loaded_runtime() -> Runtime | None:
    return _runtime
