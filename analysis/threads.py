"""Threads for the CPU engine: our own worker threads, each running one-thread torch and numpy BLAS calls.

Measured on a shared 2-core VM: torch's OpenMP regions and OpenBLAS's helper threads wait for descheduled
helpers, which made a 640 MB adapter's spectra 5-20x slower while other jobs ran (and numpy's threaded
syrk 10-100x slower). Worker threads that each call one-thread BLAS never wait for one another. numpy's
BLAS is set to one thread through threadpoolctl (in requirements.txt) only while the engine runs;
without threadpoolctl the engine uses torch's BLAS throughout. No streamlit here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_lock = threading.Lock()
_users = 0  # engine_threads blocks open in any thread
_outer_threads: int | None = None  # torch's thread count before the first of them
_blas_limiter: Any = None
_blas_controller: Any = None
_worker = threading.local()  # .active: this thread is one of map_workers' workers
_pools: dict[int, ThreadPoolExecutor] = {}  # kept: a worker's buffers (analysis/grams.py) outlive a call


def outer_threads() -> int:
    """The thread count torch had before the engine set it to one: the number of workers."""
    return _outer_threads or torch.get_num_threads()


def numpy_blas_is_single_threaded() -> bool:
    """Whether numpy's BLAS is currently held at one thread by `engine_threads` (so workers may call it)."""
    return _users > 0 and _blas_limiter is not None


def _limit_numpy_blas() -> Any:
    """A threadpoolctl limiter holding numpy's BLAS at one thread, or None without threadpoolctl."""
    global _blas_controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


@contextmanager
def engine_threads() -> Iterator[None]:
    """In this block torch and numpy's BLAS run on one thread; re-entrant and shared between threads.

    Both settings are process-wide (torch.set_num_threads also sets the default that new threads start
    with), so they are taken by the first block in, in any thread, and restored by the last one out.
    """
    global _users, _outer_threads, _blas_limiter
    with _lock:
        if _users == 0:
            _outer_threads = torch.get_num_threads()
            _blas_limiter = _limit_numpy_blas()
        _users += 1
    torch.set_num_threads(1)  # also in this thread, where OpenMP keeps a per-thread setting
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                torch.set_num_threads(_outer_threads or 1)
                _outer_threads = None
                if _blas_limiter is not None:
                    _blas_limiter.restore_original_limits()
                    _blas_limiter = None


def map_workers(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """[fn(x) for x in items] on `workers` threads (default `outer_threads()`), each with one-thread torch.

    torch and numpy release the GIL inside their kernels, so two workers keep two cores busy. Each worker
    takes the next item when it is done with one, so a worker slowed by a neighbour's job on its core does
    less, and none waits at the end while the other works through a fixed share. Called from inside a
    worker, it runs in that worker: the cores are taken already.
    """
    workers = min(workers or outer_threads(), len(items))
    with engine_threads():
        if workers <= 1 or getattr(_worker, "active", False):
            return [fn(x) for x in items]
        out: list[R] = [None] * len(items)  # type: ignore[list-item]
        pending = iter(range(len(items)))  # shared: a worker takes the next index when it is free
        take_lock = threading.Lock()
        failed = threading.Event()  # set by a worker's error: the others take nothing more

        def run() -> None:
            torch.set_num_threads(1)  # OpenMP's per-thread setting; the engine block restores the default
            _worker.active = True
            try:
                while not failed.is_set():
                    with take_lock:
                        i = next(pending, None)
                    if i is None:
                        return
                    out[i] = fn(items[i])
            except BaseException:
                failed.set()
                raise
            finally:
                _worker.active = False

        with _lock:
            pool = _pools.get(workers) or _pools.setdefault(workers, ThreadPoolExecutor(workers, "engine"))
        futures = [pool.submit(run) for _ in range(workers)]
        wait(futures)  # every worker is done before the engine block ends, failed or not
        for future in futures:
            future.result()  # re-raises a worker's error
    return out
