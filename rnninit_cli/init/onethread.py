"""Run torch computations on threads that each use one intra-op thread, so that values never depend
on `torch.set_num_threads` or OMP_NUM_THREADS.

LAPACK's QR (MKL's geqrf/orgqr) splits its work differently at 1, 2 or 4 threads, and elementwise
kernels split their range at thread-count-dependent points: both change the last bits of a result.
Drawing on threads that run torch at one thread makes every draw the same at any thread count; the
parallelism comes back from drawing independent blocks at once, one per thread of the pool.

With torch's OpenMP backend (the official wheels), `torch.set_num_threads` called on a thread sets
that thread's OpenMP and MKL thread counts only, but it also stores the count that threads starting
later adopt. `one_thread_pool` restores that count when it closes, so the caller's threads and any
thread started afterwards see the count they had before.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

_state = threading.local()
_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def on_one_thread() -> bool:
    """Whether the current thread is a worker of `one_thread_pool` (torch runs at one thread here)."""
    return getattr(_state, "one_thread", False)


def _become_one_thread_worker() -> None:
    import torch

    torch.set_num_threads(1)
    _state.one_thread = True


@contextmanager
def one_thread_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of `workers` threads that each run torch at one intra-op thread; the caller's thread
    count is restored on exit (pending work is cancelled if the block raises)."""
    import torch

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="rnninit-draw",
                              initializer=_become_one_thread_worker)
    try:
        yield pool
    finally:
        _shut_down(pool)
        torch.set_num_threads(torch.get_num_threads())  # the caller's own count, stored again for new threads


def _shut_down(pool: ThreadPoolExecutor) -> None:
    """Cancel what has not started and wait for what has (see `wait_through_interrupts`)."""
    wait_through_interrupts(lambda: pool.shutdown(wait=True, cancel_futures=True))


def wait_through_interrupts(wait: Callable[[], None]) -> None:
    """Call `wait` until it returns, through Ctrl-Cs (the last re-raised once it has): a process that exits
    while a worker thread is inside torch aborts ("terminate called without an active exception")."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            wait()
            break
        except KeyboardInterrupt as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted


def at_one_thread(function: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """`function`, computed on a one-thread worker unless the caller already is one."""

    @functools.wraps(function)
    def wrapper(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        if on_one_thread():
            return function(*args, **kwargs)
        with one_thread_pool(1) as pool:
            return pool.submit(function, *args, **kwargs).result()

    return wrapper
