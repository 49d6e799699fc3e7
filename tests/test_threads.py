"""Engine threads: settings are restored, workers keep item order, both float64 Gram kernels agree."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from analysis import grams, threads


def test_engine_threads_restores_torch_threads_and_is_reentrant():
    before = torch.get_num_threads()
    with threads.engine_threads():
        assert torch.get_num_threads() == 1
        assert threads.outer_threads() == before
        with threads.engine_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_overlapping_engine_blocks_in_two_threads_restore_the_default():
    """A session's block may close before another's (Streamlit runs each rerun on its own thread)."""
    before = torch.get_num_threads()
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with threads.engine_threads():
            a_inside.set()
            b_inside.wait(10)
        a_done.set()

    def b() -> None:
        a_inside.wait(10)
        with threads.engine_threads():
            b_inside.set()
            a_done.wait(10)
            assert threads.outer_threads() == before

    workers = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(20)
    assert torch.get_num_threads() == before
    fresh: list[int] = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [before]  # new threads (the next rerun's) start with the default again


def test_engine_threads_restores_numpy_blas_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    with threads.engine_threads():
        assert threads.numpy_blas_is_single_threaded()
        inside = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        assert all(n == 1 for n in inside)
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert after == before and not threads.numpy_blas_is_single_threaded()


def test_map_workers_keeps_order_and_uses_worker_threads():
    before = torch.get_num_threads()
    seen = set()

    def square(x: int) -> int:
        seen.add(threading.get_ident())
        assert torch.get_num_threads() == 1
        return x * x

    assert threads.map_workers(square, list(range(7)), workers=2) == [x * x for x in range(7)]
    assert threading.get_ident() not in seen
    assert threads.map_workers(square, [3], workers=2) == [9]
    assert torch.get_num_threads() == before


def test_map_workers_hands_items_to_whichever_worker_is_free():
    """A worker held up by one item (a neighbour's job on its core) does not keep a fixed share of the rest."""
    others_done = threading.Event()
    done, lock = [], threading.Lock()

    def work(x: int) -> int:
        if x == 0:
            assert others_done.wait(10)  # with fixed shares this worker would still own items 2, 4, ...
        else:
            with lock:
                done.append(x)
                if len(done) == 6:
                    others_done.set()
        return threading.get_ident()

    who = threads.map_workers(work, list(range(7)), workers=2)
    assert len(set(who[1:])) == 1 and who[0] != who[1]  # the free worker took every other item


def test_map_workers_raises_a_workers_error_and_stops_handing_out_items():
    failed = threading.Event()
    calls = []

    def fail_first(x: int) -> int:
        calls.append(x)
        if x == 0:
            failed.set()
            raise ValueError("module 0: bad factor")
        assert failed.wait(10)
        time.sleep(0.001)  # the failing worker stops the hand-out well within this
        return x

    with pytest.raises(ValueError, match="module 0"):
        threads.map_workers(fail_first, list(range(1000)), workers=2)
    returned_after = len(calls)
    time.sleep(0.05)
    assert len(calls) == returned_after < 50  # nothing runs on after the error; fixed shares ran ~500 more


def test_map_workers_inside_a_worker_runs_there_and_workers_are_reused():
    def inner(x: int) -> tuple[int, list[int]]:
        nested = threads.map_workers(lambda _: threading.get_ident(), [0, 1, 2], workers=2)
        return threading.get_ident(), nested

    seen = set()
    for _ in range(5):
        for here, nested in threads.map_workers(inner, [0, 1, 2, 3], workers=2):
            assert nested == [here] * 3  # no threads on top of the workers: the cores are taken
            seen.add(here)
    assert len(seen) <= 2 and threading.get_ident() not in seen  # the same two long-lived workers every call


@pytest.mark.parametrize("side", ["B", "A"])
def test_float64_gram_kernels_agree(side, monkeypatch):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 24, generator=g) if side == "B" else torch.randn(24, 3000, generator=g)
    exact = X.double().T @ X.double() if side == "B" else X.double() @ X.double().T
    monkeypatch.setattr(grams, "CHUNK_BYTES", 4096)  # many blocks, a ragged last one
    monkeypatch.setattr(grams, "numpy_blas_is_single_threaded", lambda: False)
    with_torch = grams.side_gram(X, side, torch.float64)
    monkeypatch.setattr(grams, "numpy_blas_is_single_threaded", lambda: True)
    with_numpy = grams.side_gram(X, side, torch.float64)
    torch.testing.assert_close(with_torch, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_numpy, exact, rtol=1e-12, atol=1e-12)
