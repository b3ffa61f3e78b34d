"""The production form (no `--local`): genq starts nothing, names what it cannot reach, and every process of a
worker runs on the one configuration it was given (flags, file, environment)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from config.settings import Settings
from ops.localstack import services
from ops.localstack.process import ManagedProcess, free_port, is_listening

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "prompts.csv"


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without any genq setting: only the config file given on the command line counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "DASHSCOPE_"))}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def genq(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from producer.cli import main; main()", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)


def toml_of(values: dict[str, object]) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return f'"{v}"' if isinstance(v, (str, Path)) else str(v)

    return "".join(f"{key} = {value(v)}\n" for key, v in values.items())


def services_config(settings: Settings, tmp_path: Path, **extra: object) -> Path:
    """A config file naming the test's Redis and S3 (with its keys), the state folder under `tmp_path`, and
    `extra`; nothing else."""
    config = tmp_path / "genq.toml"
    keys = {
        name: secret.get_secret_value()
        for name, secret in (("s3_access_key", settings.s3_access_key), ("s3_secret_key", settings.s3_secret_key))
        if secret is not None
    }
    values = {"redis_url": settings.redis_url, "s3_endpoint": settings.s3_endpoint, **keys}
    config.write_text(toml_of({**values, "state_dir": tmp_path / "state", **extra}))
    return config


def test_with_redis_down_every_command_names_it_exits_non_zero_and_starts_nothing(tmp_path: Path) -> None:
    """In the production form with nothing listening at the configured Redis, every command that uses it exits
    non-zero naming Redis and its address, and nothing is started (no state folder, nothing on the ports)."""
    redis_port, s3_port = free_port(), free_port(with_grpc_offset=True)
    config = tmp_path / "genq.toml"
    state = tmp_path / "state"
    config.write_text(
        toml_of(
            {
                "local": False,
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "s3_endpoint": f"127.0.0.1:{s3_port}",
                "dashscope_api_key": "sk-not-used",
                "state_dir": state,
            }
        )
        + '[[schedules]]\nname = "nightly"\ncron = "0 2 * * *"\nsource = "/nowhere"\n'
    )
    commands = [
        ["batch", str(SAMPLE)],
        ["status", "prompts"],
        ["watch", "prompts", "--timeout", "5"],
        ["report", "prompts"],
        ["export", "prompts", str(tmp_path / "out")],
        ["cancel", "prompts"],
        ["retry", "prompts"],
        ["resume", "default"],
        ["consume"],
        ["run-schedule", "nightly"],
        ["purge"],
        ["worker"],
        ["beat"],
        ["flower"],
        ["health", "worker"],
        ["health", "consumer"],
        ["doctor"],
    ]
    for command in commands:
        done = genq(*command, "--config", str(config), env=bare_env(), cwd=tmp_path, timeout_s=60)
        said = done.stdout + done.stderr
        assert done.returncode != 0, (command, said)
        assert "Redis" in said and f"127.0.0.1:{redis_port}" in said, (command, said)
        assert "Traceback" not in said, (command, said)
    assert not state.exists(), "a command created the local stack's folder"
    assert not is_listening("127.0.0.1", redis_port) and not is_listening("127.0.0.1", s3_port)


def test_without_an_api_key_the_production_form_refuses_instead_of_starting_the_simulator(
    settings: Settings, tmp_path: Path
) -> None:
    """With Redis and S3 answering but no DashScope key, `genq batch` exits 3 naming the missing key and the way
    to the simulator (--local), and enqueues nothing."""
    config = services_config(settings, tmp_path)
    done = genq("batch", str(SAMPLE), "--config", str(config), env=bare_env(DASHSCOPE_API_KEY=""), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no DashScope API key" in done.stderr and "--local" in done.stderr
    assert "enqueued" not in done.stdout
    assert not (tmp_path / "state").exists()


def test_a_config_file_that_moves_redis_reaches_every_task_of_the_worker(settings: Settings, tmp_path: Path) -> None:
    """`genq worker --config FILE` with Redis on another port in the file (and nothing in the environment) runs
    every stage on that Redis: the follow-ups its tasks send (polls, finalizes) reach it, so a batch sent with
    the same file ends with every accepted job succeeded."""
    assert not is_listening("127.0.0.1", 6379), "something listens on the default Redis port: the test needs it free"
    config = services_config(
        settings,
        tmp_path,
        bucket=settings.bucket,
        dashscope_api_key=settings.dashscope_api_key.get_secret_value() if settings.dashscope_api_key else "",
        dashscope_base_url=settings.dashscope_base_url or "",
        result_hosts=list(settings.result_hosts),
        require_https_results=False,
    )
    worker = ManagedProcess(
        "worker",
        [sys.executable, "-c", "from producer.cli import main; main()", "worker", "--config", str(config)],
        log_path=tmp_path / "worker.log",
        env=bare_env(),
    )
    # The sample's synchronous row is called by the call lane, a worker of its own (threads), as a deployment runs it.
    lane = ManagedProcess(
        "calls",
        [
            sys.executable,
            "-c",
            "from producer.cli import main; main()",
            "worker",
            "--queues",
            "call",
            "--config",
            str(config),
        ],
        log_path=tmp_path / "calls.log",
        env=bare_env(),
    )
    try:
        done = genq(
            "batch",
            str(SAMPLE),
            "--config",
            str(config),
            "--timeout",
            "120",
            env=bare_env(),
            cwd=tmp_path,
            timeout_s=180,
        )
    finally:
        worker.stop()
        lane.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    lane_log = (tmp_path / "calls.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout + done.stderr + log[-3000:] + lane_log[-2000:]
    assert "succeeded      │   12" in done.stdout, done.stdout
    assert "127.0.0.1:6379" not in log and "127.0.0.1:6379" not in lane_log
    assert "Task genq.call[" in lane_log and "Task genq.call[" not in log  # the call ran on the lane alone


def test_a_redis_that_wants_another_password_is_named_as_such(tmp_path: Path) -> None:
    """A Redis asking for a password is reported as refusing genq's password (none given, or a wrong one), not
    as absent, and the --local hint (which could not help) is not offered."""
    port = free_port()
    server = services.start_redis(tmp_path / "redis", port, tmp_path / "logs", password="right-password-123")
    try:
        for extra, said in (({}, "asks for a password"), ({"GENQ_REDIS_PASSWORD": "wrong-password-456"}, "refused")):
            env = bare_env(GENQ_REDIS_URL=f"redis://127.0.0.1:{port}/0", DASHSCOPE_API_KEY="sk-not-used", **extra)
            done = genq("status", "prompts", env=env, cwd=tmp_path)
            assert done.returncode == 3, done.stdout + done.stderr
            assert said in done.stderr and f"127.0.0.1:{port}" in done.stderr, done.stderr
            assert "--local" not in done.stderr and "wrong-password-456" not in done.stderr
    finally:
        server.stop()


def test_redis_lost_in_the_middle_of_a_command_ends_it_with_exit_3_and_one_sentence(
    settings: Settings, tmp_path: Path
) -> None:
    """`genq watch` on a batch whose Redis stops while it watches ends with exit code 3 and a sentence naming
    Redis, not a traceback; an export into a folder that cannot be made is exit 2 naming the folder."""
    port = free_port()
    server = services.start_redis(tmp_path / "redis", port, tmp_path / "logs")
    env = bare_env(
        GENQ_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        GENQ_S3_ENDPOINT=settings.s3_endpoint,
        GENQ_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value() if settings.s3_access_key else "",
        GENQ_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else "",
        GENQ_BUCKET=settings.bucket,
        DASHSCOPE_API_KEY="sk-not-used-0000",
    )
    try:
        enqueued = genq("batch", str(SAMPLE), "--no-wait", env=env, cwd=tmp_path)
        assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        export = genq("export", "prompts", str(blocked / "out"), env=env, cwd=tmp_path)
        assert export.returncode == 2 and str(blocked / "out") in export.stderr, export.stdout + export.stderr
        command = [sys.executable, "-c", "from producer.cli import main; main()", "watch", "prompts"]
        watching = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(4)
        server.stop()
        _, stderr = watching.communicate(timeout=90)
    finally:
        server.stop()
    said = stderr.decode(errors="replace")
    assert watching.returncode == 3, said
    assert f"Redis at 127.0.0.1:{port} stopped answering" in said and "Traceback" not in said, said


def test_a_worker_whose_s3_keys_are_refused_does_not_start(settings: Settings, tmp_path: Path) -> None:
    """`genq worker` against an S3 server that refuses its keys exits 3 naming the refusal, instead of starting
    and failing to store every result; the secret key is not printed."""
    config = services_config(
        settings,
        tmp_path,
        s3_secret_key="not-the-secret-key-1234",
        dashscope_api_key="sk-not-used-0000",
    )
    done = genq("worker", "--config", str(config), env=bare_env(), cwd=tmp_path, timeout_s=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refused genq's keys (SignatureDoesNotMatch)" in done.stderr, done.stderr
    assert "not-the-secret-key-1234" not in done.stdout + done.stderr
