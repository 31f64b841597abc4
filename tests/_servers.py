"""Real servers the tests start on 127.0.0.1 (Orthanc, MONAI Label): a free port, a start that waits until
the server answers, and a stop that always runs."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "(no log)"


@contextmanager
def serving(
    cmd: Sequence[str], ready_url: str, log_path: Path, timeout: float, cwd: Path | None = None
) -> Iterator[None]:
    """Run ``cmd`` (output to ``log_path``) until ``ready_url`` answers 200; stop it on exit. Fails the test,
    with the log's tail, when the server exits or does not answer within ``timeout`` seconds."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if requests.get(ready_url, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} not up after {timeout} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
