"""The deploy/ files stay consistent with the service: the compose file parses and wires N replicas
to one Redis, one PostgreSQL with pgvector and a load balancer; the systemd unit and the Dockerfile
start `main.py`. No image is pulled (`docker compose config` runs only when the plugin exists)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from src.rag.storage.selection import WORKSPACE_OVERRIDES, storage_kwargs_from_env

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

pytestmark = pytest.mark.unit


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_file_wires_replicas_redis_postgres_and_a_balancer() -> None:
    """Catches: a compose file that no longer parses, replicas without shared storages or without the
    shared upload volume, a workspace override that would merge tenants, a balancer that misses app."""
    doc = compose()
    services = doc["services"]
    assert {"redis", "postgres", "app", "lb"} <= set(services)
    app = services["app"]
    assert app["deploy"]["replicas"] >= 2
    env = {k: str(v) for k, v in app["environment"].items()}
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["POSTGRES_HOST"] == "postgres" and env["OWNERSHIP"] == "postgres"
    assert not set(WORKSPACE_OVERRIDES) & set(env)
    # The storage names are valid for this LightRAG (the same check the service does at start-up).
    filled = {k: (v if not v.startswith("${") else "x") for k, v in env.items()}
    kinds = storage_kwargs_from_env(filled)
    assert all(name.startswith("PG") for name in kinds.values())
    assert "pgvector" in services["postgres"]["image"]
    assert any(v.endswith(":/shared/uploads") for v in app["volumes"])
    assert "uploads" in doc["volumes"]
    assert {"redis", "postgres"} <= set(app["depends_on"])
    lb = services["lb"]
    mounted = [v.split(":")[0] for v in lb["volumes"]]
    conf = (DEPLOY / mounted[0].removeprefix("./")).read_text()
    assert "server app:8000" in conf and "proxy_pass http://ragsvc" in conf
    # Connection budget documented in the file holds: replicas x (pool + 1) < max_connections.
    max_conn = int(services["postgres"]["command"][-1].split("=")[1])
    assert app["deploy"]["replicas"] * (int(env["POSTGRES_MAX_CONNECTIONS"]) + 1) < max_conn


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose plugin not installed",
)
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """Catches: a compose file valid YAML but not a valid compose project (checked without pulling)."""
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=x\nWEBHOOK_SECRET=y\n")
    command = ["docker", "compose", "-f", str(DEPLOY / "docker-compose.yml"), "--env-file", str(env)]
    result = subprocess.run([*command, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_systemd_unit_and_dockerfile_start_the_service() -> None:
    """Catches: a unit or image that no longer starts main.py, or binds only to loopback in a container."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "ragsvc@.service")
    assert unit["Service"]["ExecStart"].endswith("main.py")
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert "EnvironmentFile" in unit["Service"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["python", "main.py"]' in dockerfile and "HOST=0.0.0.0" in dockerfile
    assert "USER ragsvc" in dockerfile
