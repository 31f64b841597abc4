"""A benchmark's runs as one background job over a few worker processes.

Each run is a command of its own (a fresh process with ``threads`` intra-op threads, its output in
``<log_dir>/<name>.log``), started when a worker is free and the runs it needs have finished. On a CPU,
two one-thread processes train two small networks in about the time one two-thread process trains one, so
the workers, not the threads, divide a benchmark's time. The commands themselves are resumable (a finished
run is read back, an interrupted one resumes from its last epoch): the job is restarted by running it again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "run_jobs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One command of a job list.

    Args:
        name: unique name; its output goes to ``<log_dir>/<name>.log`` (``/`` allowed: sub-folders).
        argv: the command.
        after: names of the jobs that must succeed before this one starts (e.g. a post-hoc map after the
            network it reads); a job whose prerequisite failed is not started.
        cost: relative duration; among the jobs ready to start, the costliest goes first, so that a long job
            does not start last and leave one worker idle at the end.
    """

    name: str
    argv: Sequence[str]
    after: tuple[str, ...] = ()
    cost: float = 1.0


def run_jobs(
    jobs: Sequence[Job], workers: int, log_dir: str | os.PathLike, threads: int = 1, poll_seconds: float = 0.5
) -> dict[str, int | None]:
    """Run ``jobs`` on ``workers`` processes at a time; return each job's exit status (``None``: not started
    because a job it needs failed). Never raises for a failed job: the others still run.

    Every process gets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = ``threads`` (torch's intra-op threads).
    If this call is interrupted, the running workers are terminated before the exception goes on (their runs
    resume on the next call).
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers={workers} and threads={threads} must be >= 1")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
    for job in jobs:
        missing = [a for a in job.after if a not in names]
        if missing:
            raise ValueError(f"job {job.name!r} waits for unknown jobs {missing}")
    log_dir = Path(log_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    status: dict[str, int | None] = {}
    pending = sorted(jobs, key=lambda j: -j.cost)  # stable: equal costs keep their order
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    total, done = len(jobs), 0
    try:
        while pending or running:
            for name, (proc, start, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                status[name] = code
                done += 1
                word = "finished" if code == 0 else f"FAILED (exit {code}; see {log_dir / (name + '.log')})"
                logger.info("[%d/%d] %s %s in %.0f s", done, total, name, word, time.monotonic() - start)
            for job in list(pending):
                failed = [a for a in job.after if a in status and status[a] != 0]
                if failed:
                    pending.remove(job)
                    status[job.name] = None
                    done += 1
                    logger.warning(
                        "[%d/%d] %s not started: %s failed", done, total, job.name, ", ".join(failed)
                    )
                    continue
                if len(running) >= workers or any(status.get(a) != 0 for a in job.after):
                    continue
                pending.remove(job)
                path = log_dir / f"{job.name}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                log = path.open("ab")
                proc = subprocess.Popen(list(job.argv), stdout=log, stderr=subprocess.STDOUT, env=env)
                running[job.name] = (proc, time.monotonic(), log)
                logger.info("started %s (log: %s)", job.name, path)
            if pending and not running:  # nothing runs and nothing can start: the jobs wait for each other
                raise ValueError(f"jobs wait for each other: {sorted(j.name for j in pending)}")
            if running:
                time.sleep(poll_seconds)
    except BaseException:  # interrupted (Ctrl-C, an error here): no worker outlives the job
        for proc, _, _log in running.values():
            proc.terminate()
        for proc, _, log in running.values():
            proc.wait()
            log.close()
        raise
    return status
