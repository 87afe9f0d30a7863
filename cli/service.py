"""Service commands: `serve`, `worker`, `keys create` and `demo` (the README's main job, embedded mode)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.audit import open_database
from cli.params import NAMED
from cli.progress import spinner

DEMO_PROMPTS = Path(__file__).resolve().parent / "demo_prompts.json"
DEMO_TENANT = "demo"
# the demo gates 8 prompts per language; an audit's default (30) would grey out every group of its report
DEMO_MIN_GROUP_SIZE = 8


def _settings(**changes: Any) -> Any:
    from settings import get_settings

    settings = get_settings()
    changes = {k: v for k, v in changes.items() if v is not None}
    return settings.model_copy(update=changes) if changes else settings


def _prepare_database(url: str) -> None:
    """SQLite creates and migrates itself; PostgreSQL must already be migrated (`emoe-gate migrate`)."""
    open_database(url, create=True)


def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="TCP port.")] = 8000,
    db: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Database URL (default: EMOE_DATABASE_URL or embedded SQLite)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, metavar="N", help="Gateway processes (real mode only).")] = 1,
) -> None:
    """Run the HTTP gateway. Without EMOE_BROKER_URL it also runs the worker in process (embedded mode)."""
    import os

    import uvicorn

    from gateway.app import create_app
    from gateway.serving import uvicorn_options

    settings = _settings(database_url=db)
    _prepare_database(settings.resolved_database_url)
    if not settings.embedded:
        _check_operator_secret(settings)  # before anything is served (dashboard sessions are signed with it)
    dispatcher = None
    if settings.embedded:
        if workers > 1:
            typer.echo("error: --workers > 1 needs EMOE_BROKER_URL (embedded mode is one process)", err=True)
            raise typer.Exit(2)
        dispatcher = _embedded_worker(settings)
    mode = "embedded (in-process worker)" if settings.embedded else f"broker {settings.broker_url}"
    typer.echo(f"emoe-gate serving on http://{host}:{port} — {mode}")
    if workers == 1:
        app = create_app(settings, dispatcher=dispatcher)
        uvicorn.run(app, host=host, port=port, log_level="info", **uvicorn_options(settings))
        return
    if db:  # each gateway process builds its settings from the environment
        os.environ["EMOE_DATABASE_URL"] = db
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(settings),  # TCP_NODELAY (else ~40 ms per kept-alive request), header timeout
        log_level="warning",
        timeout_worker_healthcheck=120,  # a gateway process imports for longer than uvicorn's 5 s default
    )


def operator_fingerprints(settings: Any) -> tuple[str, str | None, str]:
    """This process's operator secret: its fingerprint, the previous secret's (while rotating) and where the
    secret came from (the setting, or the file generated in EMOE_HOME). ValueError for a broken secret."""
    from audit.webhook_secrets import FROM_HOME, FROM_SETTING
    from workers.webhooks import secret_fingerprint, webhook_secret

    previous = settings.webhook_secret_previous
    return (
        secret_fingerprint(webhook_secret(settings)),
        secret_fingerprint(previous) if previous else None,
        FROM_SETTING if settings.webhook_secret else FROM_HOME,
    )


def _check_operator_secret(settings: Any) -> None:
    """Real mode, at start: unless this process signs with the deployment's operator secret (the first one to
    start records it), one line and exit 2, as a database that cannot be opened or is not migrated."""
    import socket

    from sqlalchemy.exc import SQLAlchemyError

    from audit.db import session_scope
    from audit.webhook_secrets import check_operator_secret

    url = open_database(settings.resolved_database_url, create=True)  # unmigrated, unreachable: exit 2
    try:
        fingerprint, previous, source = operator_fingerprints(settings)
        with session_scope(url) as session:
            problem = check_operator_secret(
                session,
                fingerprint=fingerprint,
                previous_fingerprint=previous,
                source=source,
                host=socket.gethostname(),
            )
    except ValueError as exc:
        problem = str(exc)
    except SQLAlchemyError as exc:
        problem = f"cannot check the webhook secret in the audit database: {str(exc).splitlines()[0]}"
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)


def _load_or_exit(settings: Any) -> Any:
    """The runtime (ensemble and policy), or one line naming what cannot load and exit 2."""
    from workers.runtime import check_sources, load_runtime

    problem = check_sources(settings)
    if problem is None:
        try:
            return load_runtime(settings)
        except Exception as exc:
            problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    typer.echo(f"error: {problem}", err=True)
    raise typer.Exit(2)


def _embedded_worker(settings: Any) -> Any:
    """Load the ensemble and policy before listening: a bad policy or ensemble is one line and exit 2, not a
    gateway that accepts jobs it can never run."""
    from workers.embedded import InProcessWorker

    with spinner(f"loading the ensemble {settings.ensemble!r} and the policy"):
        runtime = _load_or_exit(settings)
    return InProcessWorker(settings, runtime=runtime)


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the worker dies, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class _HooksConsumer:
    """The worker's webhook consumer: a child process, restarted if it dies, stopped with the worker.

    A worker killed outright cannot stop it, so the child asks the kernel to end it when its parent dies:
    otherwise every restarted worker would leave one more consumer behind.
    """

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.stopping = threading.Event()
        self.proc = self._start()
        self.watch = threading.Thread(target=self._keep_alive, name="emoe-hooks-watch", daemon=True)
        self.watch.start()

    def _keep_alive(self) -> None:
        while not self.stopping.wait(2.0):
            if self.proc.poll() is not None:
                typer.echo(f"webhook consumer exited ({self.proc.returncode}); starting it again", err=True)
                self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        on_linux = sys.platform == "linux"
        return subprocess.Popen(self.command, preexec_fn=_die_with_parent if on_linux else None)

    def stop(self) -> None:
        self.stopping.set()
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)


def worker(
    queues: Annotated[
        str, typer.Option(metavar="QUEUE,...", help="Comma-separated queues: gate, render, hooks.")
    ] = "gate,render,hooks",
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Worker processes (each loads the model once). Webhooks run on a consumer of their own "
            "with EMOE_WEBHOOK_CONCURRENCY threads.",
        ),
    ] = 1,
    loglevel: Annotated[str, typer.Option(metavar="LEVEL", help="Celery log level.")] = "info",
) -> None:
    """Run a Celery worker against EMOE_BROKER_URL (Redis) and EMOE_DATABASE_URL."""
    from workers.dispatch import QUEUES

    settings = _settings()
    if settings.embedded:
        typer.echo(
            "error: EMOE_BROKER_URL is not set (embedded mode needs no worker: `emoe-gate serve`)", err=True
        )
        raise typer.Exit(2)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        typer.echo(
            f"error: --queues: unknown {unknown or 'empty'}; choose from {', '.join(QUEUES)}", err=True
        )
        raise typer.Exit(2)
    from workers.runtime import check_sources

    loads_model = bool({"gate", "render"} & set(names))
    problem = check_sources(settings) if loads_model else None
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    _check_operator_secret(settings)  # before Celery consumes anything
    from workers.celery_app import app

    # webhooks wait on other people's servers: with the model's queues they get a consumer of their own (a
    # child process with a thread pool, in this process group), so a slow receiver never delays a gate
    hooks_apart = loads_model and "hooks" in names
    if hooks_apart:
        names = [n for n in names if n != "hooks"]
    pool, processes = ("prefork", concurrency) if loads_model else ("threads", settings.webhook_concurrency)
    # each pool process loads the model after the fork and takes its share of the cores (EMOE_TORCH_THREADS)
    app.conf.emoe_loads_model = loads_model
    app.conf.emoe_concurrency = concurrency
    hooks = None
    with tempfile.TemporaryDirectory(prefix="emoe-worker-") as folder:
        fatal = Path(folder) / "fatal"
        app.conf.emoe_fatal_path = str(fatal)  # a pool process that cannot load the model writes why here
        try:
            if hooks_apart:
                command = [sys.executable, "-m", "cli.main", "worker", "--queues", "hooks"]
                hooks = _HooksConsumer([*command, "--loglevel", loglevel])
            app.worker_main(
                [
                    "worker",
                    f"--queues={','.join(names)}",
                    f"--concurrency={processes}",
                    f"--loglevel={loglevel}",
                    f"--pool={pool}",
                    f"--hostname={'hooks' if not loads_model else 'emoe'}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ]
            )
        finally:
            if hooks is not None:
                hooks.stop()
            if fatal.exists():
                typer.echo(f"error: {fatal.read_text(encoding='utf-8')}", err=True)
                raise typer.Exit(3)


KeysDb = Annotated[
    str | None,
    typer.Option("--db", metavar="URL", help="Database URL (default: EMOE_DATABASE_URL or embedded SQLite)."),
]


@contextmanager
def _keys_session(db: str | None) -> Iterator[Any]:
    """A session on the keys' database (an embedded SQLite one is created and migrated first)."""
    from audit.db import session_scope

    settings = _settings(database_url=db)
    _prepare_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        yield session


def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", metavar="TENANT", help="Tenant the key belongs to.")],
    role: Annotated[
        str,
        typer.Option(
            metavar="submit|read|review",
            help="submit (submit and read), read (read only) or review (read and review).",
        ),
    ] = "submit",
    db: KeysDb = None,
) -> None:
    """Make an API key; it is printed once, on the last line, and stored only as its sha256. With the tenant's
    first key, its webhook secret is printed too."""
    from sqlalchemy import func, select

    from audit.keys import create_key
    from audit.models import ApiKey
    from audit.webhook_secrets import generations
    from workers.webhooks import tenant_secret, webhook_secret

    try:
        with _keys_session(db) as session:
            secret, row = create_key(session, tenant, role)
            prefix = row.key_prefix
            count = select(func.count()).select_from(ApiKey).where(ApiKey.tenant == tenant)
            hook_secret = None
            if session.scalar(count) == 1:  # derived before the key is committed: a failure leaves no key
                operator = webhook_secret(_settings(database_url=db))
                hook_secret = tenant_secret(operator, tenant, generations(session, tenant).current)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if hook_secret is not None:
        typer.echo(
            f"webhook secret of tenant {tenant!r}: its receivers verify each webhook with it and a Standard "
            "Webhooks library (e.g. `standardwebhooks`: Webhook(secret).verify(body, headers)); "
            "`emoe-gate webhooks secret` shows it again:"
        )
        typer.echo(hook_secret)
    typer.echo(f"created a {role!r} key for tenant {tenant!r} (prefix {prefix}); it is not shown again:")
    typer.echo(secret)


def keys_list(
    tenant: Annotated[
        str | None, typer.Option("--tenant", metavar="TENANT", help="Only this tenant's keys.")
    ] = None,
    db: KeysDb = None,
) -> None:
    """List API keys by their shown prefix (never the secret): tenant, role, created, revoked."""
    from audit.keys import list_keys

    when = "%Y-%m-%d %H:%M:%S"
    typer.echo(f"{'prefix':<14}{'tenant':<24}{'role':<8}{'created (UTC)':<21}revoked (UTC)")
    with _keys_session(db) as session:
        for row in list_keys(session, tenant):
            revoked = row.revoked_at.strftime(when) if row.revoked_at else "-"
            typer.echo(
                f"{row.key_prefix:<14}{row.tenant:<24}{row.role:<8}{row.created_at.strftime(when):<21}{revoked}"
            )


def keys_revoke(
    prefix: Annotated[
        str,
        typer.Argument(
            metavar="PREFIX",
            click_type=NAMED,
            help="The key's prefix, as `keys create` and `keys list` show.",
        ),
    ],
    db: KeysDb = None,
) -> None:
    """Revoke a key. Gateways stop accepting it within their key cache's lifetime (10 s)."""
    from audit.keys import revoke_key

    with _keys_session(db) as session:
        revoked = revoke_key(session, prefix)
    if not revoked:
        typer.echo(f"error: no live key with prefix {prefix!r} (see `emoe-gate keys list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {revoked} key(s) with prefix {prefix!r}")


def load_demo_prompts(limit: int | None = None) -> list[dict[str, str]]:
    prompts = json.loads(DEMO_PROMPTS.read_text(encoding="utf-8"))["prompts"]
    return prompts[:limit] if limit else prompts


def demo(
    db: Annotated[
        str | None, typer.Option(metavar="URL", help="Database URL (default: OUT/emoe-demo.db, SQLite).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Use only the first N bundled prompts.")
    ] = None,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the images and the report.")] = Path(
        "demo-out"
    ),
    ensemble: Annotated[
        str | None,
        typer.Option(metavar="NAME|PATH", help="Ensemble (default: EMOE_ENSEMBLE, i.e. `default`)."),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, max=200, metavar="N", help="Denoising steps of each rendered image.")
    ] = 25,
    min_group_size: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="The demo report's smallest group to compare: 8 prompts per language here, where an audit "
            "would use `emoe-gate report`'s 30.",
        ),
    ] = DEMO_MIN_GROUP_SIZE,
) -> None:
    """The main job: gate the bundled multilingual prompts, render the accepted ones, audit every decision."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from audit import jobs as repo
    from audit.db import session_scope
    from audit.language import detect_language
    from audit.models import TERMINAL_STATUSES
    from workers.embedded import InProcessWorker

    console = Console()
    out = out.resolve()
    url = db or f"sqlite:///{out / 'emoe-demo.db'}"
    settings = _settings(database_url=url, broker_url="", artifacts_dir=out / "images", ensemble=ensemble)
    # 1. the model and the policy, once (before anything is written: a typo leaves nothing behind)
    console.print("[bold]emoe-gate demo[/bold]")
    started = time.perf_counter()
    with spinner(f"loading the ensemble {settings.ensemble!r} and the policy"):
        runtime = _load_or_exit(settings)
    # 2. the database (embedded SQLite migrates itself)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_database(settings.resolved_database_url)
    console.print(f"ensemble: {runtime.ensemble.description}")
    console.print(
        f"policy: {runtime.policy.name} v{runtime.policy.version} ({runtime.policy.mode}), "
        f"flag above {runtime.policy.flag_at:.4g}, halt above {runtime.policy.halt_at:.4g}"
    )
    from emoe.config import describe_scoring

    scoring = describe_scoring(runtime.gate_config)
    console.print(scoring, highlight=False, soft_wrap=True)
    # 3. submit the prompts as jobs, as the gateway would
    prompts = load_demo_prompts(limit)
    # the paper scores a translated prompt's image against the English text (the CLIP score's reference)
    english = {row["scene"]: row["prompt"] for row in load_demo_prompts() if row["language"] == "en"}
    ids = []
    with session_scope(settings.resolved_database_url) as session:
        for row in prompts:
            job, _ = repo.create_job(
                session,
                tenant=DEMO_TENANT,
                prompt=row["prompt"],
                negative_prompt="",
                mode="fast",
                params={"seed": 0, "steps": steps, "guidance": 7.5, "height": None, "width": None},
                labels={"set": "demo", "reference_text": english.get(row.get("scene"), row["prompt"])},
                language=detect_language(row["prompt"]),
                callback_url=None,
            )
            ids.append(job.id)
    # 4. the in-process worker runs the same task code as a Celery worker: gate, decide, audit, render
    worker_ = InProcessWorker(settings, runtime=runtime)
    worker_.start()
    worker_.gate(ids)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("gate + render", total=len(ids))
        while True:
            with session_scope(settings.resolved_database_url) as session:
                jobs = repo.get_jobs(session, ids)
                done = sum(j.status in TERMINAL_STATUSES for j in jobs)
            progress.update(bar, completed=done)
            if done == len(ids):
                break
            time.sleep(0.3)
    worker_.wait_idle(timeout=60)
    worker_.stop()
    # 5. quality: the reference ensemble's own CLIP scores the images (a random ensemble's would mean nothing)
    if not runtime.ensemble.is_random and runtime.ensemble.name == "reference":
        from cli.report import store_clip_scores

        scored, _, metric = store_clip_scores(settings.resolved_database_url, progress=False)
        console.print(f"quality: {metric} of {scored} images from the reference world's CLIP")
    # 5b. a simulated review of the held jobs (verdicts from the reference world's rule) and a policy from it
    from cli.policy import simulated_review

    scenes = {job_id: row.get("scene", "") for job_id, row in zip(ids, prompts, strict=True)}
    console.print(simulated_review(settings.resolved_database_url, DEMO_TENANT, scenes, runtime.policy, out))
    # 6. the summary and the report
    with spinner("writing the summary and the fairness report"):
        summary = _summarise(
            settings,
            ids,
            out,
            time.perf_counter() - started,
            min_group_size,
            gate_scoring=(runtime.policy.fingerprint, scoring),
        )
    _print_summary(console, summary)
    console.print(f"images: {out / 'images'}; report: {summary['report_files']}")
    _print_next_steps(console, settings.resolved_database_url, out, min_group_size)


def _print_next_steps(console: Any, url: str, out: Path, min_group_size: int) -> None:
    """The commands that open this demo's database again: the report, and the dashboard."""
    import shlex
    import shutil

    # the program as the user ran it (`.venv/bin/emoe-gate`), or plain `emoe-gate` when that is on PATH
    prog = Path(sys.argv[0])
    found = shutil.which("emoe-gate")
    same = prog.name == "emoe-gate" and found is not None and Path(found).resolve() == prog.resolve()
    prog_s = "emoe-gate" if same or prog.name != "emoe-gate" else shlex.quote(str(prog))
    db = shlex.quote(url)
    lines = [
        f"{prog_s} report --db {db} --min-group-size {min_group_size} "
        f"--out {shlex.quote(str(out / 'report-again.html'))}",
        f"EMOE_DATABASE_URL={db} {prog_s} keys create --tenant {DEMO_TENANT} --role read",
        f"EMOE_DATABASE_URL={db} {prog_s} serve",
    ]
    console.print(
        "next steps: the report again, a key for the dashboard (its last line), the dashboard", soft_wrap=True
    )
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _summarise(
    settings: Any,
    ids: list,
    out: Path,
    seconds: float,
    min_group_size: int = DEMO_MIN_GROUP_SIZE,
    gate_scoring: tuple[str, str | None] = ("", None),
) -> dict[str, Any]:
    from audit import jobs as repo
    from audit.checkpoint import verify_all
    from audit.db import session_scope
    from emoe.config import describe_scoring

    gate_fingerprint, scoring = gate_scoring

    def describe(stored: dict[str, Any]) -> str:
        # the gate's own configuration by its name ("whole expert paths"); a decision records resolved layers
        return scoring if scoring and stored["fingerprint"] == gate_fingerprint else describe_scoring(stored)

    with session_scope(settings.resolved_database_url) as session:
        jobs = repo.get_jobs(session, ids)
        rows = []
        for j in jobs:
            d = j.decision
            rows.append(
                {
                    "job_id": str(j.id),
                    "language": j.language,
                    "prompt": j.prompt,
                    "status": j.status,
                    "action": d.action if d else None,
                    "score": d.score if d else None,
                    "error": j.error,
                    "images": [a.storage_uri.removeprefix("file://") for a in j.artifacts],
                    "row_hash": d.row_hash if d else None,
                }
            )
        chain_ok = all(report.ok for report in verify_all(session))
        policy = next(
            (
                {
                    "name": j.decision.policy_name,
                    "version": j.decision.policy_version,
                    "hash": j.decision.policy_hash,
                    "flag_at": j.decision.flag_at,
                    "halt_at": j.decision.halt_at,
                }
                for j in jobs
                if j.decision
            ),
            None,
        )
    by_action = Counter(r["action"] or r["status"] for r in rows)
    by_language: dict[str, Counter] = {}
    for r in rows:
        by_language.setdefault(r["language"] or "unknown", Counter())[r["action"] or r["status"]] += 1
    summary = {
        "jobs": len(rows),
        "seconds": round(seconds, 1),
        "by_action": dict(by_action),
        "by_language": {lang: dict(c) for lang, c in sorted(by_language.items())},
        "images": sum(len(r["images"]) for r in rows),
        "audit_chain_ok": chain_ok,
        "policy": policy,
        "scoring": scoring,
        "database": settings.resolved_database_url,
        "results": rows,
    }
    files = [out / "summary.json"]
    (out / "summary.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    # the fairness report (HTML)
    from audit.report import ReportOptions, build_report, render_html

    note = (
        f"Set by `emoe-gate demo` for this report: groups of at least {min_group_size} decisions are "
        "compared (`--min-group-size`; `emoe-gate report` uses 30). The bundled demo has 8 prompts per "
        "language (fewer with --limit), so its intervals are wide: it shows how the report reads, not a "
        "finding."
    )
    with session_scope(settings.resolved_database_url) as session:
        report = build_report(
            session,
            ReportOptions(min_group_size=min_group_size),
            database=settings.resolved_database_url,
            notes=[note],
            describe_scoring=describe,
        )
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    files.append(out / "report.html")
    summary["report_files"] = ", ".join(str(f) for f in files)
    return summary


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    from policies import ACTIONS

    actions = [*ACTIONS, "failed"]
    table = Table(title=f"decisions by language ({summary['jobs']} prompts, {summary['seconds']} s)")
    table.add_column("language")
    for action in actions:
        table.add_column(action, justify="right")
    for lang, counts in summary["by_language"].items():
        table.add_row(lang, *(str(counts.get(a, 0)) for a in actions))
    table.add_row("[bold]all[/bold]", *(f"[bold]{summary['by_action'].get(a, 0)}[/bold]" for a in actions))
    console.print(table)
    console.print(f"{summary['images']} images written; audit chain verified: {summary['audit_chain_ok']}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the CLI."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("demo")(demo)
    groups["keys"].command("create")(keys_create)
    groups["keys"].command("list")(keys_list)
    groups["keys"].command("revoke")(keys_revoke)
