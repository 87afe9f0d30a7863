"""Gateway load benchmark: accepted submissions per second and p50/p99 latency of POST /v1/jobs against real
PostgreSQL and Redis, from a separate load process; then end-to-end jobs per minute with the tiny ensemble.

    OMP_NUM_THREADS=1 python bench/gateway_load.py --requests 3000 --concurrency 32 --e2e-jobs 20

It starts its own redis-server (free port), a fresh PostgreSQL database (127.0.0.1:5432), `emoe-gate serve`
(uvicorn, one process) and, for the end-to-end part, one `emoe-gate worker`; it stops them all at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROMPTS = [
    row["prompt"] for row in json.loads((ROOT / "workers" / "demo_prompts.json").read_text())["prompts"]
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def load_process(base: str, key: str, requests: int, concurrency: int, out: mp.Queue) -> None:
    """Runs in its own process: `concurrency` asyncio clients share `requests` submissions."""
    import httpx

    async def main() -> dict:
        latencies: list[float] = []
        codes: dict[int, int] = {}
        counter = iter(range(requests))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=base, limits=limits, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as client:

            async def worker() -> None:
                for i in counter:
                    body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}
                    started = time.perf_counter()
                    response = await client.post("/v1/jobs", json=body)
                    latencies.append(time.perf_counter() - started)
                    codes[response.status_code] = codes.get(response.status_code, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        return {"latencies": latencies, "codes": codes, "elapsed": elapsed}

    out.put(asyncio.run(main()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--e2e-jobs", type=int, default=20, help="0 skips the end-to-end part")
    parser.add_argument("--e2e-steps", type=int, default=10, help="denoising steps of each end-to-end job")
    parser.add_argument("--gateway-workers", type=int, default=1, help="uvicorn processes of the gateway")
    args = parser.parse_args()

    import httpx
    import redis
    import sqlalchemy as sa

    from audit.db import dispose_engine, session_scope, upgrade
    from audit.keys import create_key

    tmp = Path(tempfile.mkdtemp(prefix="emoe-bench-"))
    redis_port, http_port = free_port(), free_port()
    db_name = f"emoe_bench_{uuid.uuid4().hex[:10]}"
    db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db_name
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{db_name}"')
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        upgrade(db_url)
        with session_scope(db_url) as session:
            key, _ = create_key(session, "bench")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "EMOE_DATABASE_URL": db_url,
            "EMOE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMOE_ENSEMBLE": "tiny",
            "EMOE_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "EMOE_QUEUE_MAX_DEPTH": "10000000",
        }
        policy = os.environ.get("EMOE_POLICY_PATH")
        if policy:
            env["EMOE_POLICY_PATH"] = policy
        gateway_log = open(tmp / "gateway.log", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--port",
                    str(http_port),
                    "--workers",
                    str(args.gateway_workers),
                ],
                cwd=ROOT,
                env=env,
                stdout=gateway_log,
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{http_port}"
        wait_http(base + "/healthz")

        # 1. submissions: a separate process drives the gateway (no worker runs, so the queue only grows)
        results = {}
        for phase, n in (("warmup", args.warmup), ("measured", args.requests)):
            queue: mp.Queue = mp.Queue()
            loader = mp.Process(target=load_process, args=(base, key, n, args.concurrency, queue))
            loader.start()
            results[phase] = queue.get()
            loader.join()
        r = results["measured"]
        accepted = r["codes"].get(202, 0)
        lat_ms = [x * 1000 for x in r["latencies"]]
        print(
            f"submissions: {args.requests} requests, concurrency {args.concurrency}, "
            f"{args.gateway_workers} gateway process(es), codes {r['codes']}"
        )
        print(
            f"  accepted/s: {accepted / r['elapsed']:.0f}   "
            f"latency ms: p50 {percentile(lat_ms, 0.5):.1f}  p99 {percentile(lat_ms, 0.99):.1f}  "
            f"mean {statistics.fmean(lat_ms):.1f}  max {max(lat_ms):.1f}"
        )

        # 2. end to end: drop the queued load, start one worker, time N jobs from submit to terminal
        if args.e2e_jobs:
            redis.Redis(port=redis_port).flushdb()
            with session_scope(db_url) as session:
                session.execute(sa.text("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'"))
            worker_log = open(tmp / "worker.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "worker", "--queues", "gate,render,hooks"],
                    cwd=ROOT,
                    env=env,
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                )
            )
            deadline = time.monotonic() + 300
            while httpx.get(base + "/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("worker never became ready; see " + str(tmp / "worker.log"))
                time.sleep(0.5)
            headers = {"Authorization": f"Bearer {key}"}
            started = time.perf_counter()
            ids = [
                httpx.post(
                    base + "/v1/jobs",
                    headers=headers,
                    json={"prompt": PROMPTS[i % len(PROMPTS)], "steps": args.e2e_steps},
                ).json()["id"]
                for i in range(args.e2e_jobs)
            ]
            statuses: list[str] = []
            while True:
                statuses = [httpx.get(f"{base}/v1/jobs/{i}", headers=headers).json()["status"] for i in ids]
                if all(s in ("completed", "halted", "failed", "cancelled") for s in statuses):
                    break
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            print(
                f"end to end: {args.e2e_jobs} jobs ({args.e2e_steps} steps, tiny ensemble, 1 worker process) "
                f"in {elapsed:.1f} s = {args.e2e_jobs / elapsed * 60:.1f} jobs/min; {counts}"
            )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dispose_engine(db_url)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
