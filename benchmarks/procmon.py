"""Run a command as a child process and record its wall time and peak memory.

Peak RSS comes from the kernel (``wait4`` rusage ``ru_maxrss`` of the child, the same figure
``/usr/bin/time -v`` prints as "Maximum resident set size"); a psutil poll every 0.2 s adds the
peak over the whole process tree. An optional address-space cap (``RLIMIT_AS``) turns running out
of memory into a recorded failure instead of the machine's OOM killer, and an optional RSS ceiling
kills the child before it can take the machine down.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

GIB = 1 << 30


@dataclass(frozen=True)
class Run:
    command: list[str]
    returncode: int
    seconds: float
    peak_rss_bytes: int  # ru_maxrss of the child (largest single process)
    peak_tree_rss_bytes: int  # polled sum over the process tree
    cpu_seconds: float  # user + system CPU time of the child (and its waited-for children)
    killed_for_rss: bool
    timed_out: bool
    stdout_tail: str
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_for_rss and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run(
    command: Sequence[str],
    *,
    address_space_limit: int | None = None,
    rss_ceiling: int | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> Run:
    """Run ``command`` to completion (or until a limit), returning its measurements."""

    def limit() -> None:  # runs in the child before exec
        if address_space_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space_limit, address_space_limit))

    out_path = log or Path(os.devnull)
    started = time.perf_counter()
    with (
        out_path.open("w") as out,
        open(str(out_path) + ".err", "w") if log else open(os.devnull, "w") as err,
    ):
        child = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            # The child only sets its own rlimit before exec; this process starts no threads
            # that could hold a lock across the fork.
            preexec_fn=limit if address_space_limit is not None else None,  # noqa: PLW1509
            start_new_session=True,
        )
        proc = psutil.Process(child.pid)
        peak_tree = 0
        killed = timed_out = False
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak_tree, killed
            while not stop.is_set():
                rss = _tree_rss(proc)
                peak_tree = max(peak_tree, rss)
                if rss_ceiling is not None and rss > rss_ceiling:
                    killed = True
                    os.killpg(child.pid, signal.SIGKILL)
                    return
                stop.wait(0.2)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        deadline = None if timeout is None else started + timeout
        status = 0
        usage = None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                timed_out = True
                os.killpg(child.pid, signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        watcher.join()
    seconds = time.perf_counter() - started
    tail = lambda p: p.read_text(errors="replace")[-4000:] if p.is_file() else ""  # noqa: E731
    return Run(
        command=list(command),
        returncode=child.returncode,
        seconds=round(seconds, 3),
        peak_rss_bytes=int(usage.ru_maxrss) * 1024 if usage else 0,
        peak_tree_rss_bytes=peak_tree,
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3) if usage else 0.0,
        killed_for_rss=killed,
        timed_out=timed_out,
        stdout_tail=tail(log) if log else "",
        stderr_tail=tail(Path(str(log) + ".err")) if log else "",
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
