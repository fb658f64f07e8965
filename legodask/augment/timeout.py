"""A time-out for a structure's augmentation that works in Dask worker threads."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

class AugmentTimeout(Exception):
    """A structure's augmentation ran past its time-out."""


T = TypeVar("T")


def call_with_timeout(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn()`` in this thread; raise ``AugmentTimeout`` in it after ``seconds``.

    A watchdog thread raises the exception asynchronously inside the running
    Python code (pyxtal's subgroup search is Python), and again every 0.2 s, as
    code under a bare ``except`` may swallow it.  Works in dask worker threads,
    where signals cannot be used; a single long call into C is not interrupted
    (the exception arrives when it returns).
    """
    tid = threading.get_ident()
    done = threading.Event()
    lock = threading.Lock()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        while True:
            with lock:
                if done.is_set():
                    return
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(tid), ctypes.py_object(AugmentTimeout))
            if done.wait(0.2):
                return

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        try:
            return fn()
        finally:
            with lock:
                done.set()
                # clear an exception raised but not yet delivered
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
    except AugmentTimeout:
        raise AugmentTimeout(f"augmentation ran past its time-out of {seconds:g} s") from None

