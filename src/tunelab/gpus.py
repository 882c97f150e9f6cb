"""One GPU per queued experiment: `TUNELAB_GPUS=0,1 dvc queue start -j 2`.

DVC's queue runs each experiment in its own temporary copy of the repository
with its own worker; nothing there tells a worker which GPU is its own. When
``TUNELAB_GPUS`` lists GPU ids and ``CUDA_VISIBLE_DEVICES`` is not already set,
a train or evaluate stage claims the first free id from that list with an
exclusive ``flock`` on a file in ``TUNELAB_GPU_LOCKS`` (default: a folder in
the system temp dir, shared by every worker on the machine), sets
``CUDA_VISIBLE_DEVICES`` to it before CUDA starts, and holds the lock until the
process exits. A crashed process releases its lock with it (the kernel drops
flocks of dead processes), so a GPU is never leaked.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

from tunelab.errors import TunelabError

_held: list[int] = []  # open lock descriptors, kept for the life of the process


def claim_gpu(wait_seconds: float = 24 * 3600, poll: float = 1.0) -> str | None:
    """Pin this process to a free GPU from TUNELAB_GPUS; return its id (None when not asked)."""
    pool = os.environ.get("TUNELAB_GPUS", "").strip()
    if not pool or "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    ids = [g.strip() for g in pool.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise TunelabError("TUNELAB_GPUS", f"expected comma-separated GPU ids, got {pool!r}")
    locks = Path(os.environ.get("TUNELAB_GPU_LOCKS", Path(tempfile.gettempdir()) / "tunelab-gpus"))
    locks.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for gpu in ids:
            fd = os.open(locks / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _held.append(fd)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            print(f"using GPU {gpu} (TUNELAB_GPUS={pool})", flush=True)
            return gpu
        if time.monotonic() > deadline:
            raise TunelabError("TUNELAB_GPUS", f"no GPU of {pool} became free")
        time.sleep(poll)
