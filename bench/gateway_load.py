"""Gateway load benchmark: accepted submissions per second and p50/p99 latency of POST /v1/jobs against real
PostgreSQL and Redis, from a separate load process; then end-to-end jobs per minute of `emoe-gate worker` in
the default environment (the default, reference ensemble, no thread settings).

    python bench/gateway_load.py --requests 3000 --concurrency 32 --e2e-jobs 20
    # before/after side by side in one run: a second gateway served from another source tree, rounds alternate
    git archive <old commit> | tar -x -C /tmp/before
    python bench/gateway_load.py --baseline-root /tmp/before --rounds 3 --e2e-jobs 0

It starts its own redis-server (free port), a fresh PostgreSQL database (127.0.0.1:5432), `emoe-gate serve`
(uvicorn, one process) and, for the end-to-end part, one `emoe-gate worker`; it stops them all at the end.
The load process uses a minimal keep-alive HTTP/1.1 client on raw asyncio streams (`--client httpx` for the
old one) and reports its own CPU time, so that one can see it is not the bottleneck.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TERMINAL = ("completed", "held", "rejected", "halted", "failed", "cancelled")  # job statuses that end a wait
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROMPTS = [row["prompt"] for row in json.loads((ROOT / "cli" / "demo_prompts.json").read_text())["prompts"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_database() -> tuple[str, str]:
    """A fresh PostgreSQL database for one run on 127.0.0.1:5432: its name and its URL."""
    import sqlalchemy as sa

    name = f"emoe_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_database(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def start_redis(port: int, folder: Path, **popen: Any) -> subprocess.Popen:
    """A redis-server of the run's own on 127.0.0.1:`port` that keeps nothing on disk."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*command, "--dir", str(folder)], stdout=subprocess.DEVNULL, **popen)


def user_environment() -> dict[str, str]:
    """The environment a user has: none of this machine's EMOE_* or thread settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("EMOE_", "OMP_", "MKL_"))}


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


async def _raw_post(reader, writer, head: bytes, body: bytes) -> int:
    """One POST on a kept-alive connection; returns the status code (the body is read and dropped)."""
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line = await reader.readuntil(b"\r\n")
    headers = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in headers.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(status_line.split(b" ", 2)[1])


def load_process(
    base: str, key: str, requests: int, concurrency: int, client_kind: str, out: mp.Queue
) -> None:
    """Runs in its own process: `concurrency` asyncio clients share `requests` submissions."""
    import httpx

    async def main() -> dict:
        latencies: list[float] = []
        codes: dict[int, int] = {}
        counter = iter(range(requests))
        host, port = base.removeprefix("http://").split(":")

        async def raw_worker() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            head = (
                f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode()
            try:
                for i in counter:
                    body = json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}).encode()
                    started = time.perf_counter()
                    code = await _raw_post(reader, writer, head, body)
                    latencies.append(time.perf_counter() - started)
                    codes[code] = codes.get(code, 0) + 1
            finally:
                writer.close()

        async def httpx_worker(client: httpx.AsyncClient) -> None:
            for i in counter:
                body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}
                started = time.perf_counter()
                response = await client.post("/v1/jobs", json=body)
                latencies.append(time.perf_counter() - started)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1

        cpu = time.process_time()
        started = time.perf_counter()
        if client_kind == "raw":
            await asyncio.gather(*(raw_worker() for _ in range(concurrency)))
        else:
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(
                base_url=base, limits=limits, timeout=30, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                await asyncio.gather(*(httpx_worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return {
            "latencies": latencies,
            "codes": codes,
            "elapsed": elapsed,
            "client_cpu": time.process_time() - cpu,
        }

    out.put(asyncio.run(main()))


def load_avg() -> float:
    return os.getloadavg()[0]


def measure(base: str, key: str, args: argparse.Namespace, label: str) -> dict:
    """Warm up, then drive `args.requests` submissions from a separate process; prints the figures."""
    results = {}
    for phase, n in (("warmup", args.warmup), ("measured", args.requests)):
        queue: mp.Queue = mp.Queue()
        loader = mp.Process(target=load_process, args=(base, key, n, args.concurrency, args.client, queue))
        loader.start()
        results[phase] = queue.get()
        loader.join()
    r = results["measured"]
    accepted = r["codes"].get(202, 0)
    lat_ms = [x * 1000 for x in r["latencies"]]
    figures = {
        "accepted_per_s": accepted / r["elapsed"],
        "p50": percentile(lat_ms, 0.5),
        "p99": percentile(lat_ms, 0.99),
        "load": load_avg(),
    }
    print(
        f"[{label}] {args.requests} requests, concurrency {args.concurrency}, "
        f"{args.gateway_workers} gateway process(es), codes {r['codes']}, load average {figures['load']:.1f}"
    )
    print(
        f"  accepted/s: {figures['accepted_per_s']:.0f}   "
        f"latency ms: p50 {figures['p50']:.1f}  p99 {figures['p99']:.1f}  "
        f"mean {statistics.fmean(lat_ms):.1f}  max {max(lat_ms):.1f}   "
        f"client CPU {r['client_cpu'] / args.requests * 1000:.2f} ms/request "
        f"({r['client_cpu'] / r['elapsed']:.0%} of a core)",
        flush=True,
    )
    return figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--e2e-jobs", type=int, default=20, help="0 skips the end-to-end part")
    parser.add_argument(
        "--e2e-steps", type=int, default=25, help="denoising steps of each end-to-end job (the API's default)"
    )
    parser.add_argument("--gateway-workers", type=int, default=1, help="uvicorn processes of the gateway")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="the load process's HTTP client"
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        help="also serve a gateway from this source tree (an older commit) and measure both, alternating",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements per gateway (alternating)")
    args = parser.parse_args()

    import httpx
    import redis
    import sqlalchemy as sa

    from audit.db import dispose_engine, session_scope, upgrade
    from audit.keys import create_key

    tmp = Path(tempfile.mkdtemp(prefix="emoe-bench-"))
    redis_port, http_port = free_port(), free_port()
    db_name, db_url = create_database()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_redis(redis_port, tmp))
        upgrade(db_url)
        with session_scope(db_url) as session:
            key, _ = create_key(session, "bench")
        user = user_environment()
        env = {
            **user,
            "EMOE_DATABASE_URL": db_url,
            "EMOE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMOE_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "EMOE_QUEUE_MAX_DEPTH": "10000000",  # the load part fills the queue far past the default limit
            # one key and one tenant make all the load: lift their fair-share limits (bench/two_tenants.py
            # measures those)
            "EMOE_TENANT_MAX_QUEUED": "10000000",
            "EMOE_SUBMIT_RATE_PER_S": "1000000",
            "EMOE_SUBMIT_BURST": "1000000",
        }

        def serve(root: Path, port: int, log_name: str) -> str:
            log = open(tmp / log_name, "w")  # noqa: SIM115
            command = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)]
            command += ["--workers", str(args.gateway_workers)]
            procs.append(subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT))
            return f"http://127.0.0.1:{port}"

        base = serve(ROOT, http_port, "gateway.log")
        gateways = [("this tree", base)]
        if args.baseline_root:
            gateways.insert(
                0, (f"baseline {args.baseline_root}", serve(args.baseline_root, free_port(), "base.log"))
            )
        for _, url in gateways:
            wait_http(url + "/healthz")

        # 1. submissions: a separate process drives the gateway (no worker runs, so the queue only grows)
        figures: dict[str, list[dict]] = {label: [] for label, _ in gateways}
        for _ in range(args.rounds):
            for label, url in gateways:
                figures[label].append(measure(url, key, args, label))
        if args.rounds > 1 or len(gateways) > 1:
            print("summary (median over rounds):")
            for label, rows in figures.items():
                med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                print(
                    f"  {label}: accepted/s {med['accepted_per_s']:.0f}  p50 {med['p50']:.1f} ms  "
                    f"p99 {med['p99']:.1f} ms  (load average {med['load']:.1f})"
                )

        # 2. end to end: drop the queued load, start one worker, time N jobs from submit to terminal
        if args.e2e_jobs:
            redis.Redis(port=redis_port).flushdb()
            with session_scope(db_url) as session:
                session.execute(sa.text("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'"))
            worker_log = open(tmp / "worker.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "worker", "--queues", "gate,render,hooks"],
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
                if all(s in TERMINAL for s in statuses):
                    break
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            if "failed" in counts:
                job = httpx.get(f"{base}/v1/jobs/{ids[statuses.index('failed')]}", headers=headers).json()
                print(f"a failed job's error: {job['error']}")
            print(
                f"end to end: {args.e2e_jobs} jobs ({args.e2e_steps} steps, default ensemble, "
                "1 worker process, default environment) "
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
        drop_database(db_name)


if __name__ == "__main__":
    main()
