"""Worker processes for this machine's CPU-bound stages: validation, and the
source reads of verification.

Workers are forked from multiprocessing's fork server, which imports the
modules they run once: starting two workers then takes ~20 ms instead of
the seconds a spawned interpreter spends importing Prefect. Not forked from
this process, whose threads (Prefect's, s3fs's event loop) a fork would copy
mid-state. A process has one fork server for its lifetime, preloaded with
what the first pool named, so every pool names every stage's module: the
second stage's workers would otherwise import it each time a pool starts,
once per window.

The fork server and its workers end with the process that started them
(tasks.fork_server_parent), so a killed run leaves no process behind.

A worker also runs the parent's main module again, as ``__mp_main__``
(multiprocessing's rule for every start method but fork). The modules that
module's top level took its names from are preloaded too, so running it
again costs a worker next to nothing: they load once, in the fork server,
not in every worker of every pool (0.7 s a worker under ``python -m
bench.verify``, most of a run's start).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from types import ModuleType

WORKER_MODULES = ("tasks.validate", "tasks.verify.source")
# Preloaded first: see the modules.
_FORK_SERVER_SETUP = ("tasks.fork_server_signals", "tasks.fork_server_parent")
_fork_server_started = False


def worker_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*_FORK_SERVER_SETUP, *_main_imports(), *WORKER_MODULES])
    _start_fork_server_deaf_to_ctrl_c()
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_prepare_worker, initargs=(dict(os.environ),))


def _start_fork_server_deaf_to_ctrl_c() -> None:
    """Started with SIGINT ignored, the fork server's interpreter ignores it
    from its first instruction: a disposition of SIG_IGN survives the exec,
    and Python installs its KeyboardInterrupt handler only over the default.
    tasks.fork_server_signals, its first preload, comes a moment too late
    for a Ctrl-C pressed while the interpreter starts. ``signal.signal``
    works only in the main thread, where a run's flow and its validation
    run; a pool first started elsewhere relies on that module alone. A
    Ctrl-C in the few milliseconds of the start is lost; pressed again, it
    counts."""
    global _fork_server_started
    if _fork_server_started or threading.current_thread() is not threading.main_thread():
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)
    _fork_server_started = True


def _main_imports() -> list[str]:
    """Where the main module's top-level names come from. Not the module
    itself: runpy warns when the module it runs is imported already. None
    for a package's ``__main__`` (a worker does not run it again) or a main
    with no file (``python -c``)."""
    main = sys.modules["__main__"]
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if name.endswith("__main__") or not (name or getattr(main, "__file__", None)):
        return []
    sources = {value.__name__ if isinstance(value, ModuleType)
               else getattr(value, "__module__", None)
               for key, value in vars(main).items() if not key.startswith("__")}
    return sorted(m for m in sources if isinstance(m, str) and m in sys.modules
                  and m not in ("__main__", "__mp_main__", name))


def _prepare_worker(environment: dict[str, str]) -> None:
    """A forked worker starts with the environment the fork server started
    with; the caller's (AWS endpoint and credentials) may have changed since.
    (It ignores Ctrl-C from the start: tasks.fork_server_signals.)"""
    os.environ.clear()
    os.environ.update(environment)
