"""Shared fixtures: one intra-op thread for the whole run, a fresh plugin registry per test,
and a wall-clock limit for solves that must end quickly (a hang is a failure, not a stuck CI
job)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import pytest
import torch

import odeserve


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """The test problems are tiny: more intra-op threads only add contention (and, on a
    busy 2-core CI machine, OpenMP spin-waiting that slows small ops many times over)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fresh_registry() -> Iterator[odeserve.Registry]:
    """A new process-wide registry, not loaded yet (built-ins arrive from the entry points on
    first use, so a test may patch the entry points first); the previous registry is restored
    afterwards, so runtime registrations never leak between tests."""
    reg = odeserve.Registry()
    old = odeserve.set_registry(reg)
    try:
        yield reg
    finally:
        odeserve.set_registry(old)


class SolveTimeout(AssertionError):
    """A solve that must end quickly did not."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield  # no SIGALRM here: the solves' own max_steps still bound them
        return

    def handler(signum, frame):  # noqa: ARG001
        raise SolveTimeout(f"did not finish within {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def time_limit():
    """``with time_limit(s): ...`` fails the test if the block runs longer than ``s`` seconds."""
    return _time_limit
