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

A worker also runs the parent's main module again, as ``__mp_main__``
(multiprocessing's rule for every start method but fork). Preloaded under
its import name, what that module imports is loaded once, in the fork
server: not in every worker of every pool (0.7 s a worker under
``python -m bench.verify``, most of a run's start).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

WORKER_MODULES = ("tasks.validate", "tasks.verify.source")


def worker_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*_main_module(), *WORKER_MODULES])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_prepare_worker, initargs=(dict(os.environ),))


def _main_module() -> list[str]:
    """The main module's import name when it was run as one (``python -m``);
    a package's ``__main__`` is not run again in a worker, nor a script by path
    (whose imports, as ``dicom-import``'s, are light)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = getattr(spec, "name", None)
    return [name] if name and not name.endswith("__main__") else []


def _prepare_worker(environment: dict[str, str]) -> None:
    """A forked worker starts with the environment the fork server started
    with; the caller's (AWS endpoint and credentials) may have changed since.
    Ctrl-C reaches the whole process group: the caller decides what a stop
    means (tasks.interruption), so a worker must not die of it mid-chunk."""
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
