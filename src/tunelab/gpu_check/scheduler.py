"""Every stage of dvc.yaml run as soon as its upstream stages are done, ``jobs`` at a time,
with the peak GPU memory of each (the driver's per-process figure, polled)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tunelab.gpu_check.workdir import CHECK


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


GRAPH = r"""
import json
from dvc.repo import Repo
graph = Repo(".").index.graph
print(json.dumps({
    "stages": [s.addressing for s in graph.nodes],
    "needs": [[a.addressing, b.addressing] for a, b in graph.edges],
}))
"""


class GpuPoller:
    """Peak GPU memory per process tree, from the driver (NVML), polled twice a second."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}  # root pid -> peak bytes
        self.roots: set[int] = set()
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # noqa: BLE001 - no NVIDIA driver: no figures
            self._nvml = None
            return
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            used: dict[int, int] = {}
            for h in self._handles:
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                    used[proc.pid] = used.get(proc.pid, 0) + (proc.usedGpuMemory or 0)
            for root in list(self.roots):
                try:
                    tree = [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
                except psutil.NoSuchProcess:
                    continue
                total = sum(used.get(pid, 0) for pid in tree)
                self.peaks[root] = max(self.peaks.get(root, 0), total)

    def free_gib(self) -> float | None:
        """The least free memory of this machine's GPUs now (None without a driver)."""
        if self._nvml is None:
            return None
        free = [self._nvml.nvmlDeviceGetMemoryInfo(h).free for h in self._handles]
        return min(free) / 2**30 if free else None

    def peak_gib(self, pid: int) -> float | None:
        if self._nvml is None:
            return None
        return round(self.peaks.get(pid, 0) / 2**30, 2)

    def stop(self) -> None:
        self._stop.set()


def error_line(text: str) -> str | None:
    """The stage's one-line error, else the last line of a traceback."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    patterns = (r"^error: ", r"^[A-Za-z_.]*(Error|Exception)\b", r"^ERROR: ")  # stage, Python, DVC
    for pattern in patterns:
        for ln in reversed(lines):
            if re.match(pattern, ln):
                return ln[:500]
    return lines[-1][:500] if lines else None


def schedule(
    workdir: Path,
    env: dict[str, str],
    jobs: int,
    deadline: float,
    poller: GpuPoller,
    min_free_gib: float = 0.0,
    settle: float = 0.0,
) -> list[dict[str, Any]]:
    """Run every stage once its upstream stages succeeded; a failure skips its descendants.

    ``min_free_gib``: while stages run, the next one starts only when the GPUs have that
    much memory free and ``settle`` seconds have passed since the last start (a stage
    takes its memory while it loads): a GPU smaller than the stages' sum is not overrun.
    """
    res = subprocess.run(
        [sys.executable, "-c", GRAPH], cwd=workdir, env=env, capture_output=True, text=True
    )
    if res.returncode:
        raise SystemExit(f"error: reading dvc.yaml's stages failed:\n{res.stderr[-2000:]}")
    graph = json.loads(res.stdout)
    needs: dict[str, set[str]] = {s: set() for s in graph["stages"]}
    for stage, dep in graph["needs"]:
        needs[stage].add(dep)
    below: dict[str, int] = {}

    def descendants(s: str) -> int:
        if s not in below:
            kids = [t for t in needs if s in needs[t]]
            below[s] = len(kids) + sum(descendants(k) for k in kids)
        return below[s]

    logs = workdir / CHECK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    order = sorted(needs, key=lambda s: (-descendants(s), s))
    last_start, began = 0.0, time.perf_counter()
    while len(results) < len(needs):
        for stage in order:
            if stage in results or stage in running:
                continue
            failed = [d for d in needs[stage] if d in results and results[d]["status"] != "ok"]
            if failed:
                results[stage] = {
                    "stage": stage,
                    "status": "skipped",
                    "reason": f"{failed[0]} failed",
                }
                continue
            if len(running) >= jobs or not all(d in results for d in needs[stage]):
                continue
            if running and min_free_gib and not _room(poller, min_free_gib, settle, last_start):
                continue
            fh = (logs / f"{stage}.log").open("w")
            cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
            proc = subprocess.Popen(  # its own process group: a timeout kills the stage too
                cmd,
                cwd=workdir,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            poller.roots.add(proc.pid)
            running[stage] = (proc, time.perf_counter(), fh)
            last_start = time.perf_counter()
            log(f"start {stage}")
        for stage, (proc, start, fh) in list(running.items()):
            if proc.poll() is None and time.perf_counter() < deadline:
                continue
            results[stage] = _outcome(stage, proc, start, fh, logs / f"{stage}.log", poller)
            results[stage]["started_at_seconds"] = round(start - began, 1)
            del running[stage]
            log(f"{results[stage]['status']:>7} {stage} {results[stage]['seconds']}s")
        time.sleep(0.2)
    return [results[s] for s in order]


def _outcome(
    stage: str, proc: subprocess.Popen, start: float, fh: Any, log_file: Path, poller: GpuPoller
) -> dict[str, Any]:
    """A stage that ended, or is killed at the deadline: status, seconds, peak memory, and
    for a failure its error line and the log's tail."""
    timed_out = proc.poll() is None
    if timed_out:  # dvc and the stage it started (which would write on after dvc died)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    fh.close()
    ok = proc.returncode == 0
    result: dict[str, Any] = {
        "stage": stage,
        "status": "ok" if ok else ("timeout" if timed_out else "failed"),
        "exit": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_gpu_gib": poller.peak_gib(proc.pid),
    }
    if not ok:
        text = log_file.read_text(errors="replace")
        result["error"] = error_line(text)
        result["log_tail"] = text[-2500:]
    poller.roots.discard(proc.pid)
    return result


def _room(poller: GpuPoller, min_free_gib: float, settle: float, last_start: float) -> bool:
    if time.perf_counter() - last_start < settle:
        return False
    free = poller.free_gib()
    return free is None or free >= min_free_gib
