"""docker-compose.yml, checked statically (there is no Docker engine here): it parses, Redis is durable, no
secret is inlined, and every genq role a service runs is a real genq command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml
from typer.main import get_command

from producer.cli import app

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def start_script_roles() -> dict[str, list[str]]:
    """role -> the genq command line the start script execs for it (a `role)` branch, then its `exec genq`)."""
    roles: dict[str, list[str]] = {}
    role = None
    for line in (ROOT / "ops" / "docker" / "start").read_text().splitlines():
        line = line.strip()
        label = re.match(r"^([a-z*]+)\)", line)
        if label:
            role = label.group(1)
        if "exec genq " in line and role not in (None, "*"):
            rest = line.split("exec genq ", 1)[1]
            roles[str(role)] = rest.split(";;")[0].replace('"$@"', "").replace('"$role"', "").split()
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


def test_compose_file_validates_against_the_compose_specification() -> None:
    """docker-compose.yml is valid under the Compose Specification's JSON Schema (tests/data/README.md)."""
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert errors == []


def test_the_schema_check_catches_a_broken_file() -> None:
    """The same check refuses a service with a misspelt key, so a pass above means something."""
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    broken = compose()
    broken["services"]["worker"]["comand"] = ["worker"]
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_every_genq_role_is_present() -> None:
    """worker, beat and flower run from the genq image; the simulator and monitoring sit behind profiles."""
    services = compose()["services"]
    roles = {s["command"][0] for s in services.values() if s.get("image") == "genq:latest"}
    assert {"worker", "beat", "flower", "sim"} <= roles
    assert services["simulator"]["profiles"] == ["sim"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


def test_redis_is_durable_and_never_evicts() -> None:
    """Redis runs with AOF and noeviction, as the design requires, and has a healthcheck."""
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "healthcheck" in redis


def test_no_secret_is_written_into_the_compose_file() -> None:
    """Credentials come from secrets files under ./secrets (which git and the image's build context ignore),
    mounted into every service that needs them; the compose file holds none, and neither does .env.example."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "sk-" not in text and "PASSWORD:" not in text.upper().replace("GENQ_REDIS_PASSWORD", "")
    declared = compose()["secrets"]
    assert {name: s["file"] for name, s in declared.items()} == {
        name: f"./secrets/{name}"
        for name in ("dashscope_api_key", "genq_redis_password", "genq_s3_access_key", "genq_s3_secret_key")
    }
    services = compose()["services"]
    for name in ("worker", "webhooks", "beat", "consumer", "flower"):
        assert set(declared) <= set(services[name]["secrets"]), name
    assert {"genq_s3_access_key", "genq_s3_secret_key"} <= set(services["s3"]["secrets"])
    assert services["redis"]["secrets"] == ["genq_redis_password"]
    assert {".env", "secrets/"} <= set((ROOT / ".gitignore").read_text().splitlines())
    assert {".env", "secrets"} <= set((ROOT / ".dockerignore").read_text().splitlines())
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    assert not {k for k in example if "KEY" in k or "SECRET" in k or "PASSWORD" in k}


def test_a_service_serves_the_webhook_lane() -> None:
    """Webhook delivery has its own queue; some service runs a worker on it, and it is not the stages' worker."""
    services = compose()["services"]
    lanes = {name: s["command"] for name, s in services.items() if s.get("image") == "genq:latest"}
    queues = {
        n: c[c.index("--queues") + 1].split(",") for n, c in lanes.items() if c[0] == "worker" and "--queues" in c
    }
    assert [n for n, q in queues.items() if "webhooks" in q] == ["webhooks"] and "worker" not in queues
