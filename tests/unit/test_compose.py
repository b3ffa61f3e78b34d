"""docker-compose.yml, checked statically (there is no Docker engine here): it parses, Redis is durable, no
secret is inlined, and every genq role a service runs is a real genq command."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from producer.cli import app

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def start_script_roles() -> dict[str, list[str]]:
    """role -> the genq command line the start script execs for it."""
    roles = {}
    for line in (ROOT / "ops" / "docker" / "start").read_text().splitlines():
        line = line.strip()
        if ") exec genq " in line and not line.startswith("*"):
            role, _, rest = line.partition(") exec genq ")
            roles[role] = rest.split(";;")[0].replace('"$@"', "").split()
    return roles


def test_every_service_role_resolves_to_a_genq_command() -> None:
    """Each service built from the genq image runs a role the start script maps onto an existing subcommand."""
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    roles = start_script_roles()
    services = compose()["services"]
    genq_services = {name: s for name, s in services.items() if s.get("image") == "genq:latest"}
    assert genq_services, "no service runs the genq image"
    for name, service in genq_services.items():
        role = service["command"][0]
        assert role in roles, f"service {name}: role {role!r} unknown to ops/docker/start"
        assert roles[role][0] in commands, f"service {name}: genq {roles[role][0]} does not exist"


def test_redis_is_durable_and_never_evicts() -> None:
    """Redis runs with AOF and noeviction, as the design requires, and has a healthcheck."""
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "healthcheck" in redis


def test_no_secret_is_written_into_the_compose_file() -> None:
    """Credentials come from the environment file, which git ignores."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${GENQ_S3_SECRET_KEY" in text and "sk-" not in text
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
