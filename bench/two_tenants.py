"""Two tenants on one deployment: tenant B's latency alone, then while tenant A floods, side by side.

    python bench/two_tenants.py --probes 20
    python bench/two_tenants.py --split-workers   # a gate worker and a render,hooks worker (README: growing)

It starts its own redis-server, a fresh PostgreSQL database (127.0.0.1:5432), `emoe-gate serve` (one process,
default settings but `EMOE_WEBHOOK_ALLOW=127.0.0.1/32` for the slow receiver) and the README's worker
(`--queues gate,render,hooks`, the default ensemble), then measures B's `POST /v1/score` (one prompt: gated by
the worker), `GET /v1/jobs/{id}` and `/healthz`, `--probes` times each, one after another:

1. alone;
2. while A floods: `--waits` concurrent `GET /v1/jobs/{id}?wait=25` from A's read key, A's submit key
   submitting fast-mode `--big-side`² jobs of 25 steps (each answered 202, or 429 once A's rate or share runs
   out), each with a callback to a receiver that takes 8 s to answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_load import (
    ROOT,
    create_database,
    drop_database,
    free_port,
    percentile,
    start_redis,
    user_environment,
    wait_http,
)

sys.path.insert(0, str(ROOT))


class SlowReceiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(8)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def probe_b(base: str, b_key: str, probes: int) -> dict[str, list[float]]:
    """B's requests, one after another: latencies in ms by kind (and the score requests' status codes)."""
    import httpx

    times: dict[str, list[float]] = {"score": [], "get": [], "healthz": []}
    codes: list[int] = []
    headers = {"Authorization": f"Bearer {b_key}"}
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=headers) as client:
        for i in range(probes):
            started = time.perf_counter()
            response = await client.post("/v1/score", json={"prompts": [f"a small red circle number {i}"]})
            times["score"].append((time.perf_counter() - started) * 1000)
            codes.append(response.status_code)
            job_id = response.json()["results"][0]["job_id"]
            started = time.perf_counter()
            await client.get(f"/v1/jobs/{job_id}")
            times["get"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await client.get("/healthz")
            times["healthz"].append((time.perf_counter() - started) * 1000)
    times["codes"] = codes  # type: ignore[assignment]
    return times


async def flood_a(base: str, a_submit: str, a_read: str, args: argparse.Namespace, hook: str, stop) -> dict:
    """A's flood until `stop` is set: waits on its newest job, big jobs with slow callbacks."""
    import httpx

    outcome: dict[str, dict[int, int]] = {"submit": {}, "wait": {}}
    newest: list[str] = []
    limits = httpx.Limits(max_connections=args.waits + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        first = await client.post(
            "/v1/jobs", json={"prompt": "a big blue square"}, headers={"Authorization": f"Bearer {a_submit}"}
        )
        newest.append(first.json()["id"])

        async def submitter() -> None:
            body = {
                "prompt": "a big blue square in the middle",
                "height": args.big_side,
                "width": args.big_side,
                "steps": 25,
                "callback_url": hook,
            }
            while not stop.is_set():
                r = await client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {a_submit}"})
                outcome["submit"][r.status_code] = outcome["submit"].get(r.status_code, 0) + 1
                if r.status_code == 202:
                    newest.append(r.json()["id"])
                await asyncio.sleep(float(r.headers.get("Retry-After", 0)) if r.status_code == 429 else 0)

        async def waiter() -> None:
            while not stop.is_set():
                r = await client.get(
                    f"/v1/jobs/{newest[-1]}?wait=25", headers={"Authorization": f"Bearer {a_read}"}
                )
                outcome["wait"][r.status_code] = outcome["wait"].get(r.status_code, 0) + 1
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", 1)))

        tasks = [asyncio.create_task(submitter())] + [
            asyncio.create_task(waiter()) for _ in range(args.waits)
        ]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outcome


def summary(label: str, times: dict[str, list[float]]) -> str:
    cells = []
    for kind in ("score", "get", "healthz"):
        values = times[kind]
        cells.append(
            f"{kind}: p50 {percentile(values, 0.5):7.1f}  p90 {percentile(values, 0.9):7.1f}  "
            f"max {max(values):7.1f}"
        )
    codes = times["codes"]
    return (
        f"{label:<14} "
        + " | ".join(cells)
        + f" | score codes {dict((c, codes.count(c)) for c in set(codes))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=8, help="B's requests of each kind per phase")
    parser.add_argument("--waits", type=int, default=40, help="A's concurrent waits")
    parser.add_argument("--big-side", type=int, default=256, help="height and width of A's jobs")
    parser.add_argument(
        "--tenant-max-queued", type=int, help="EMOE_TENANT_MAX_QUEUED for the run (default: the setting's)"
    )
    parser.add_argument(
        "--split-workers", action="store_true", help="a gate worker and a render,hooks worker"
    )
    args = parser.parse_args()

    import httpx

    from audit.db import dispose_engine, session_scope, upgrade
    from audit.keys import create_key

    tmp = Path(tempfile.mkdtemp(prefix="emoe-two-tenants-"))
    redis_port, http_port = free_port(), free_port()
    db_name, db_url = create_database()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), SlowReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    procs: list[subprocess.Popen] = []
    try:
        # a session of its own: stopped as a group, as the others
        procs.append(start_redis(redis_port, tmp, start_new_session=True))
        upgrade(db_url)
        with session_scope(db_url) as session:
            a_submit, _ = create_key(session, "tenant-a")
            a_read, _ = create_key(session, "tenant-a", "read")
            b_key, _ = create_key(session, "tenant-b")
        user = user_environment()
        env = {
            **user,
            "EMOE_DATABASE_URL": db_url,
            "EMOE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMOE_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "EMOE_WEBHOOK_ALLOW": "127.0.0.1/32",
        }
        if args.tenant_max_queued:
            env["EMOE_TENANT_MAX_QUEUED"] = str(args.tenant_max_queued)

        def spawn(name: str, *command: str) -> None:
            log = open(tmp / f"{name}.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli.main", *command],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stopped as a group: a worker's pool and hooks consumer too
                )
            )

        spawn("gateway", "serve", "--port", str(http_port))
        base = f"http://127.0.0.1:{http_port}"
        wait_http(base + "/healthz")
        for queues in ("gate", "render,hooks") if args.split_workers else ("gate,render,hooks",):
            spawn(f"worker-{queues}", "worker", "--queues", queues)
        deadline = time.monotonic() + 300
        while httpx.get(base + "/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker became ready; see {tmp}")
            time.sleep(0.5)
        asyncio.run(probe_b(base, b_key, 2))  # warm up

        alone = asyncio.run(probe_b(base, b_key, args.probes))

        async def flooded() -> tuple[dict, dict]:
            stop = asyncio.Event()
            flood = asyncio.create_task(flood_a(base, a_submit, a_read, args, hook, stop))
            await asyncio.sleep(3)  # A's waits are in flight and its jobs queued
            during = await probe_b(base, b_key, args.probes)
            stop.set()
            return during, await flood

        during, outcome = asyncio.run(flooded())
        workers = "gate + render,hooks workers" if args.split_workers else "one worker (gate,render,hooks)"
        if args.tenant_max_queued:
            workers += f", EMOE_TENANT_MAX_QUEUED={args.tenant_max_queued}"
        print(
            f"tenant B, latency in ms ({args.probes} of each, one after another); {workers}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(summary("alone", alone))
        print(summary("A flooding", during))
        print(
            f"A meanwhile: {args.waits} concurrent waits -> {outcome['wait']}; "
            f"{args.big_side}x{args.big_side} jobs with an 8 s webhook -> {outcome['submit']}"
        )
        print(
            "B's score p50, flooded / alone: "
            f"{statistics.median(during['score']) / statistics.median(alone['score']):.2f}"
        )
    finally:
        receiver.shutdown()
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        dispose_engine(db_url)
        drop_database(db_name)


if __name__ == "__main__":
    main()
