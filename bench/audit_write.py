"""Benchmark: decisions appended per second to the hash-chained audit log on the real PostgreSQL.

Runs one writer and four concurrent writer processes, each unbatched (one decision per transaction, as a gate
worker without batching does) and batched (`--batch` decisions per transaction under one advisory lock), then
verifies the whole chain. Jobs are inserted before the clock starts (the gateway creates them at submission);
the decision append is what the chain serialises. Prints JSON.

    python bench/audit_write.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--decisions 4000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from audit import db
from audit.chain import append_decisions, decision_values, verify_chain
from audit.models import Job
from policies import DecisionContext, decide, parse_policy

FINGERPRINT = "be" * 32
POLICY = parse_policy(
    {"name": "bench", "version": "1", "fingerprint": FINGERPRINT, "flag_at": 1.0, "halt_at": 2.0}
)


class BenchScore:
    """The fields of an `emoe.Score` that the log stores (4 experts)."""

    def __init__(self, i: int) -> None:
        self.score = (i % 97) / 32
        self.eu = self.score / 1000
        self.num_experts = 4
        self.fingerprint = FINGERPRINT
        self.scoring = {
            "seed": 0,
            "steps": 25,
            "guidance": 7.5,
            "scheduler": "PNDMScheduler",
            "first_timestep": 961,
        }
        self.expert_deviation = [0.11 * i % 1, 0.2, 0.3, 0.4]


def create_database(admin_url: str) -> str:
    name = f"emoe_bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    db.dispose_engine(url)
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    engine.dispose()


def insert_jobs(url: str, count: int, tag: str) -> list[tuple]:
    """Insert `count` finished jobs (untimed) and return what a decision copies from each."""
    rows = []
    for i in range(count):
        prompt = f"{tag} prompt {i}"
        rows.append(
            {
                "id": uuid.uuid4(),
                "tenant": "bench",
                "prompt": prompt,
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                "prompt_chars": len(prompt),
                "prompt_words": 3,
                "language": ("en", "de", "fr", "ja")[i % 4],
                "status": "completed",
            }
        )
    with db.session_scope(url) as session:
        session.execute(sa.insert(Job), rows)
    return [(r["id"], r["tenant"], r["prompt_sha256"], r["language"]) for r in rows]


def write(url: str, jobs: list[tuple], batch: int, start_at: float) -> tuple[int, float, float]:
    """Append one decision per job, `batch` per transaction; return (count, start, end), wall-clock."""
    time.sleep(max(0.0, start_at - time.time()))  # the writers start together
    t0 = time.time()
    for lo in range(0, len(jobs), batch):
        with db.session_scope(url) as session:
            rows = []
            for i, (job_id, tenant, sha, language) in enumerate(jobs[lo : lo + batch], start=lo):
                job = SimpleNamespace(
                    id=job_id, tenant=tenant, prompt_sha256=sha, language=language, labels={}
                )
                score = BenchScore(i)
                decision = decide(score, DecisionContext(language=language), POLICY)
                rows.append(decision_values(job, score, decision, {"gate_ms": 41.5, "queue_ms": 2.0}))
            append_decisions(session, rows)
    t1 = time.time()
    db.dispose_engine(url)
    return len(jobs), t0, t1


def run_case(url: str, writers: int, per_writer: int, batch: int) -> dict:
    job_lists = [
        insert_jobs(url, per_writer, f"w{w}-b{batch}-{uuid.uuid4().hex[:6]}") for w in range(writers)
    ]
    db.dispose_engine(url)
    if writers == 1:
        results = [write(url, job_lists[0], batch, time.time())]
    else:
        with multiprocessing.get_context("spawn").Pool(writers) as pool:
            pool.map(time.sleep, [0] * writers)  # the processes are up and imported before the clock starts
            start_at = time.time() + 0.5
            results = pool.starmap(write, [(url, jobs, batch, start_at) for jobs in job_lists])
    total = sum(n for n, _, _ in results)
    # aggregate throughput: all decisions over the span from the first writer's start to the last one's end
    span = max(end for _, _, end in results) - min(start for _, start, _ in results)
    return {
        "writers": writers,
        "batch": batch,
        "decisions": total,
        "seconds": round(span, 3),
        "decisions_per_s": round(total / span, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test", help="admin URL"
    )
    parser.add_argument("--decisions", type=int, default=4000, help="decisions per batched case")
    parser.add_argument("--unbatched", type=int, default=1000, help="decisions per unbatched case")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    url = create_database(args.url)
    try:
        db.upgrade(url)
        cases = []
        for writers in (1, 4):
            cases.append(run_case(url, writers, args.unbatched // writers, 1))
            cases.append(run_case(url, writers, args.decisions // writers, args.batch))
        t0 = time.perf_counter()
        with db.session_scope(url) as session:
            report = verify_chain(session)
        verify_s = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "benchmark": "audit_write",
                    "database": "postgresql " + db.get_engine(url).dialect.server_version_info.__str__(),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                        "python": platform.python_version(),
                    },
                    "cases": cases,
                    "chain": {
                        "ok": report.ok,
                        "rows": report.rows,
                        "problem": report.problem,
                        "verify_seconds": round(verify_s, 3),
                        "verify_rows_per_s": round(report.rows / verify_s, 1),
                    },
                },
                indent=2,
            )
        )
        if not report.ok:
            sys.exit(1)
    finally:
        drop_database(args.url, url)


if __name__ == "__main__":
    main()
