"""Waiting for the processes of a multi-rank test: each rank's output, under one deadline for all of them, so a hung
gloo rendezvous or collective fails the test instead of hanging CI."""

from __future__ import annotations

import subprocess
import time

import pytest


def wait_for_ranks(processes: list[subprocess.Popen[bytes]], deadline_s: float) -> list[str]:
    """The output of every rank (started with stdout=PIPE, stderr=STDOUT); pytest.fail naming the ranks that
    failed, or when they are not all done within `deadline_s` (then every rank is killed)."""
    deadline = time.monotonic() + deadline_s
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(output.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.communicate()
        pytest.fail(f"the {len(processes)} ranks did not finish within {deadline_s} s (hung rendezvous or collective?)")
    failed = [f"rank {rank} exited with {process.returncode}:\n{output[-3000:]}"
              for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)) if process.returncode]
    if failed:
        pytest.fail("\n".join(failed))
    return outputs
