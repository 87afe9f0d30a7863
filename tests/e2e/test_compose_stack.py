"""The compose stack's own settings start and serve a job. No container engine runs here, so the processes
run on this machine with the environment `docker/compose.yaml` and `docker/worker.Dockerfile` give them;
only what must point at this machine changes (the service hosts, the data folders) and the device (no GPU:
the CPU, in the image's float16)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import PG_ADMIN_URL
from tests.e2e.conftest import ROOT, Stack

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.e2e]
LOCAL = {"EMOE_DATABASE_URL", "EMOE_BROKER_URL", "EMOE_ARTIFACTS_DIR", "EMOE_HOME"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def _defaults(value: str) -> str:
    """What compose substitutes for `${VAR:-default}` when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_worker_environment(folder: Path) -> dict[str, str]:
    """The worker container's EMOE_* environment: the image's ENV, then the compose file's."""
    dockerfile = (ROOT / "docker" / "worker.Dockerfile").read_text()
    env = dict(re.findall(r"\b(EMOE_[A-Z_]+)=(\S+)", dockerfile))
    env.update({k: _defaults(str(v)) for k, v in _compose()["x-emoe-env"].items()})
    # what compose requires the operator to set (`${VAR:?...}`), set as the README says
    required = {k for k, v in env.items() if re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", v)}
    assert required == {"EMOE_WEBHOOK_SECRET"}
    from workers.webhooks import new_secret

    env["EMOE_WEBHOOK_SECRET"] = new_secret()
    env = {k: v for k, v in env.items() if k not in LOCAL}
    assert env.pop("EMOE_DEVICE") == "cuda"
    env["EMOE_DEVICE"] = "cpu"
    env["EMOE_ARTIFACTS_DIR"] = str(folder / "artifacts")
    return env


class ComposeStack(Stack):
    """The stack with compose's database roles (docker/postgres-init.sql): migrate runs as the owner with
    `--app-role`, the key command, the gateway and the workers connect as the application's role."""

    def start(self, *worker_queues: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.roles = (f"emoe_owner_{tag}", f"emoe_app_{tag}")
        database = f"emoe_e2e_{tag}"
        self._admin(
            f'CREATE ROLE "{self.roles[0]}" LOGIN',
            f'CREATE ROLE "{self.roles[1]}" LOGIN',
            f'CREATE DATABASE "{database}" OWNER "{self.roles[0]}"',
        )
        host = PG_ADMIN_URL.rsplit("@", 1)[1].rsplit("/", 1)[0]
        self.redis.start()
        self.db = f"postgresql://{self.roles[0]}@{host}/{database}"
        self.run("migrate", "--app-role", self.roles[1])  # compose's migrate service
        self.db = f"postgresql://{self.roles[1]}@{host}/{database}"
        self.key = self.run("keys", "create", "--tenant", "e2e").stdout.strip().splitlines()[-1]
        self.gateway = self._spawn("gateway", "serve", "--port", str(self.port))
        self.wait_http("/healthz", self.gateway)
        for queues in worker_queues:
            self.start_worker(queues)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if getattr(self, "roles", None):
                self._admin(*(f'DROP ROLE IF EXISTS "{role}"' for role in reversed(self.roles)))

    @staticmethod
    def _admin(*statements: str) -> None:
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()


def test_the_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in _compose()


def test_the_stack_starts_with_its_own_settings_and_serves_a_job(tmp_path: Path) -> None:
    env = compose_worker_environment(tmp_path)
    assert env["EMOE_DTYPE"] == "float16" and env["EMOE_ENSEMBLE"] == "default"
    services = _compose()["services"]
    queues = [services[name]["command"][3] for name in ("gate-worker", "render-worker")]
    assert queues == ["gate", "render,hooks"]
    migrate = services["migrate"]
    assert migrate["command"] == ["emoe-gate", "migrate", "--app-role", "emoe_app"]
    assert migrate["environment"]["EMOE_DATABASE_URL"].startswith("postgresql://emoe_owner:")
    assert _compose()["x-emoe-env"]["EMOE_DATABASE_URL"].startswith("postgresql://emoe_app:")
    stack = ComposeStack(tmp_path, environment=env)
    try:
        stack.start(*queues)  # both workers loaded the bundled float16 policy: neither refused to start
        ids = stack.submit(["a small red circle on the left", "pieni punainen ympyrä vasemmalla"])
        jobs = stack.wait_terminal(ids, timeout=240)
        assert [j["status"] for j in jobs] == ["completed", "halted"], jobs
        assert jobs[0]["decision"]["policy_version"] == "4"
        verified = stack.run("audit", "verify")  # as the application's role
        assert "audit chain intact: 2 decisions" in verified.stdout
        assert "artifact chain intact: 1 artifacts" in verified.stdout
    finally:
        stack.stop()
