"""The benchmark's job runner: workers, order, prerequisites, failures, threads and logs."""

from __future__ import annotations

import sys

import pytest

from monai_wsol.benchmark.jobs import Job, run_jobs


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _append(path, text: str) -> str:
    return f"open({str(path)!r}, 'a').write({text!r} + '\\n')"


def test_one_worker_runs_the_costliest_first_and_prerequisites_before(tmp_path):
    order = tmp_path / "order.txt"
    jobs = [
        Job("small", _py(_append(order, "small")), cost=1),
        Job("large", _py(_append(order, "large")), cost=5),
        Job("after_small", _py(_append(order, "after_small")), after=("small",), cost=9),
    ]
    status = run_jobs(jobs, workers=1, log_dir=tmp_path / "logs", poll_seconds=0.05)
    assert status == {"small": 0, "large": 0, "after_small": 0}
    # after_small is the costliest but waits for small; large (5) goes before small (1)
    assert order.read_text().split() == ["large", "small", "after_small"]


def test_two_workers_run_at_once(tmp_path):
    """Each job waits for the other's file: both finish only when they run at the same time."""
    a, b = tmp_path / "a", tmp_path / "b"

    def meet(mine, theirs) -> list[str]:
        return _py(
            f"import pathlib, time, sys; pathlib.Path({str(mine)!r}).touch()\n"
            f"for _ in range(400):\n"
            f"    if pathlib.Path({str(theirs)!r}).exists(): sys.exit(0)\n"
            f"    time.sleep(0.05)\n"
            f"sys.exit(3)"
        )

    status = run_jobs(
        [Job("a", meet(a, b)), Job("b", meet(b, a))], workers=2, log_dir=tmp_path, poll_seconds=0.05
    )
    assert status == {"a": 0, "b": 0}


def test_a_failure_skips_what_needs_it_and_the_rest_runs(tmp_path):
    done = tmp_path / "done.txt"
    jobs = [
        Job("bad", _py("import sys; print('broken input'); sys.exit(4)")),
        Job("needs_bad", _py(_append(done, "needs_bad")), after=("bad",)),
        Job("good", _py(_append(done, "good"))),
    ]
    status = run_jobs(jobs, workers=2, log_dir=tmp_path / "logs", poll_seconds=0.05)
    assert status == {"bad": 4, "needs_bad": None, "good": 0}
    assert done.read_text().split() == ["good"]
    assert "broken input" in (tmp_path / "logs" / "bad.log").read_text()


def test_threads_reach_every_process_and_logs_append(tmp_path):
    code = "import os; print('threads', os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    for _ in range(2):  # a restarted job appends to its log
        run_jobs([Job("sub/run", _py(code))], workers=1, log_dir=tmp_path, threads=3, poll_seconds=0.05)
    assert (tmp_path / "sub" / "run.log").read_text().splitlines() == ["threads 3 3"] * 2


@pytest.mark.parametrize(
    "jobs, workers, match",
    [
        ([Job("x", _py("")), Job("x", _py(""))], 1, "unique"),
        ([Job("x", _py(""), after=("y",))], 1, "unknown"),
        ([Job("x", _py(""))], 0, "workers=0"),
        ([Job("x", _py(""), after=("y",)), Job("y", _py(""), after=("x",))], 1, "wait for each other"),
    ],
)
def test_bad_job_lists_are_refused(tmp_path, jobs, workers, match):
    with pytest.raises(ValueError, match=match):
        run_jobs(jobs, workers=workers, log_dir=tmp_path)


def test_an_interrupted_job_stops_its_workers(tmp_path, monkeypatch):
    """Ctrl-C in the job's process: the running worker is terminated, not left behind, and the exception
    goes on."""
    import os
    import time

    from monai_wsol.benchmark import jobs as jobs_module

    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    real_sleep = time.sleep

    def interrupt(_seconds):
        for _ in range(400):  # until the worker runs
            if pid_file.exists() and pid_file.read_text():
                raise KeyboardInterrupt
            real_sleep(0.05)
        raise AssertionError("the worker did not start")

    monkeypatch.setattr(jobs_module.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_jobs([Job("long", _py(code))], workers=1, log_dir=tmp_path)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(pid, 0)
