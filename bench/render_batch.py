"""Render batching end to end: images per second of one `emoe-gate worker` process (real PostgreSQL and Redis,
the default environment: the default, reference ensemble, no thread settings) with EMOE_RENDER_BATCH_SIZE
1, 4 and 8 side by side in one run, on the same N accepted jobs; and whether every job's image is the same
bytes whatever the batch size.

    python bench/render_batch.py --jobs 32 --batches 1,4,8 --rounds 2

Per batch size and round it starts one worker (EMOE_RENDER_BATCH_SIZE=b), waits until its model is loaded,
submits N jobs the way the gateway does (one commit, then one gate message each) and waits until all are
finished. It reports, per batch size (median over rounds): images/s over the whole run (submit to the last
job finished: gate and render) and over the render stage alone (the first decision to the last job
finished), the best round (on a shared machine other load only slows a round down), and the worker's CPU
seconds per image (what other load moves least), each against batch 1. The jobs cycle through the demo
set's English prompts with a seed each (every other one with a negative prompt); a job the bundled policy
halts has no image, the same at every batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_load import ROOT, create_database, drop_database, free_port, start_redis, user_environment

# English, the reference ensemble's dominant language: the bundled policy lets these through to rendering
PROMPTS = [
    row["prompt"]
    for row in json.loads((ROOT / "cli" / "demo_prompts.json").read_text())["prompts"]
    if row["language"] == "en"
]


def submit(db_url: str, dispatcher, jobs: int, steps: int, tag: str) -> list[uuid.UUID]:
    """N queued jobs in one commit, then their gate messages (what POST /v1/jobs does for a batch)."""
    from audit import jobs as repo
    from audit.db import session_scope

    requests = [
        repo.NewJob(
            tenant="bench",
            prompt=PROMPTS[i % len(PROMPTS)],
            negative_prompt="blurry, text" if i % 2 else "",
            mode="fast",
            params={"seed": i, "steps": steps, "guidance": 7.5, "height": None, "width": None},
            labels={"run": tag},
            language=None,
            callback_url=None,
        )
        for i in range(jobs)
    ]
    with session_scope(db_url) as session:
        created = repo.create_jobs(session, requests)
    ids = [result[0].id for result in created]  # type: ignore[index]
    dispatcher.gate(ids)
    return ids


def outcome(db_url: str, ids: list[uuid.UUID]) -> dict:
    """Statuses, the (seed -> image sha256) map, and the first decision and last finish times."""
    import sqlalchemy as sa

    from audit.db import session_scope
    from audit.models import Artifact, Decision, Job

    with session_scope(db_url) as session:
        jobs = {j.id: j for j in session.scalars(sa.select(Job).where(Job.id.in_(ids)))}
        first_decision = session.scalar(
            sa.select(sa.func.min(Decision.created_at)).where(Decision.job_id.in_(ids))
        )
        images = {
            jobs[a.job_id].params["seed"]: a.sha256
            for a in session.scalars(sa.select(Artifact).where(Artifact.job_id.in_(ids)))
        }
        statuses = [j.status for j in jobs.values()]
        errors = [j.error for j in jobs.values() if j.status == "failed"]
        last = max((j.finished_at for j in jobs.values() if j.finished_at), default=None)
    return {
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "errors": errors[:3],
        "images": images,
        "first_decision": first_decision,
        "last_finished": last,
    }


def worker_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the worker's processes have used so far: less moved by other load on the
    machine than wall time (a process waiting for a core uses none)."""
    import psutil

    main = psutil.Process(pid)
    total = 0.0
    for proc in [main, *main.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_once(db_url: str, env: dict, tmp: Path, args: argparse.Namespace, batch: int, tag: str) -> dict:
    from settings import Settings
    from workers.dispatch import CeleryDispatcher

    settings = Settings(database_url=db_url, broker_url=env["EMOE_BROKER_URL"])
    dispatcher = CeleryDispatcher(settings)
    log = open(tmp / f"worker-{tag}.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--queues", "gate,render,hooks"],
        cwd=ROOT,
        env={**env, "EMOE_RENDER_BATCH_SIZE": str(batch)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        while dispatcher.ready_workers() < 1:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker never became ready; see {tmp / f'worker-{tag}.log'}")
            time.sleep(0.2)
        cpu_before = worker_cpu_s(worker.pid)
        started = time.time()
        ids = submit(db_url, dispatcher, args.jobs, args.steps, tag)
        while True:
            done = outcome(db_url, ids)
            if sum(
                n for s, n in done["statuses"].items() if s not in ("queued", "scoring", "rendering")
            ) == len(ids):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited; see {tmp / f'worker-{tag}.log'}")
            time.sleep(0.2)
        cpu_s = worker_cpu_s(worker.pid) - cpu_before
        finished = done["last_finished"].timestamp()
        images = len(done["images"])
        render_s = finished - done["first_decision"].timestamp()
        return {
            "batch": batch,
            "images": images,
            "statuses": done["statuses"],
            "errors": done["errors"],
            "wall_s": finished - started,
            "render_s": render_s,
            "images_per_s": images / (finished - started),
            "render_images_per_s": images / render_s,
            "cpu_s_per_image": cpu_s / images if images else float("nan"),
            "sha256": done["images"],
        }
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        # no heartbeat key of the stopped worker may count for the next one
        from workers.heartbeat import READY_PREFIX, redis_client

        client = redis_client(settings)
        for key in client.scan_iter(match=READY_PREFIX + "*"):
            client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32, help="accepted jobs per measurement")
    parser.add_argument(
        "--steps", type=int, default=25, help="denoising steps of each job (the API's default)"
    )
    parser.add_argument("--batches", default="1,4,8", help="EMOE_RENDER_BATCH_SIZE values, side by side")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per batch size (order rotates)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from audit.db import dispose_engine, upgrade

    tmp = Path(tempfile.mkdtemp(prefix="emoe-render-bench-"))
    redis_port = free_port()
    db_name, db_url = create_database()
    redis = start_redis(redis_port, tmp)
    try:
        upgrade(db_url)
        user = user_environment()
        env = {
            **user,
            "EMOE_DATABASE_URL": db_url,
            "EMOE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMOE_ARTIFACTS_DIR": str(tmp / "artifacts"),
        }
        rows: dict[int, list[dict]] = {b: [] for b in batches}
        for n in range(args.rounds):
            order = batches[n % len(batches) :] + batches[: n % len(batches)]
            for b in order:
                row = run_once(db_url, env, tmp, args, b, f"b{b}-r{n}")
                rows[b].append(row)
                print(
                    f"round {n + 1} batch {b}: {row['images']} images, {row['images_per_s']:.3f} images/s "
                    f"(render stage {row['render_images_per_s']:.3f}/s), {row['cpu_s_per_image']:.3f} CPU s "
                    f"per image, load {os.getloadavg()[0]:.1f}, {row['statuses']}"
                    + (f" errors: {row['errors']}" if row["errors"] else ""),
                    flush=True,
                )
        reference = rows[batches[0]][0]["sha256"]
        identical = all(r["sha256"] == reference for rs in rows.values() for r in rs)
        base = statistics.median(r["images_per_s"] for r in rows[batches[0]])
        base_render = statistics.median(r["render_images_per_s"] for r in rows[batches[0]])
        cpu = platform.processor() or platform.machine()
        print(
            f"\n{args.jobs} jobs x {args.steps} steps, default ensemble, 1 worker process, default "
            f"environment; {os.cpu_count()} CPUs ({cpu}), load average now {os.getloadavg()[0]:.1f}"
        )
        best = max(r["images_per_s"] for r in rows[batches[0]])
        base_cpu = statistics.median(r["cpu_s_per_image"] for r in rows[batches[0]])
        for b in batches:
            total = statistics.median(r["images_per_s"] for r in rows[b])
            render = statistics.median(r["render_images_per_s"] for r in rows[b])
            top = max(r["images_per_s"] for r in rows[b])
            cpu = statistics.median(r["cpu_s_per_image"] for r in rows[b])
            print(
                f"  render batch {b}: {total:.3f} images/s ({total / base:.2f}x), render stage {render:.3f} "
                f"images/s ({render / base_render:.2f}x), best round {top:.3f} images/s ({top / best:.2f}x), "
                f"{cpu:.3f} CPU s per image ({base_cpu / cpu:.2f}x fewer)"
            )
        print(
            f"  every job's image byte-identical at every batch size: {identical} ({len(reference)} images)"
        )
    finally:
        redis.terminate()
        redis.wait(30)
        dispose_engine(db_url)
        drop_database(db_name)


if __name__ == "__main__":
    main()
