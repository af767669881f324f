"""Preloaded by the fork server of tasks.worker_processes, and imported by
nothing else: the fork server and the workers it forks end when the process
that started them dies, even by SIGKILL.

multiprocessing does not see to that. Its fork server would exit once the
last holder of its "alive" pipe closed it, but every worker holds that pipe
(so that it could start processes of its own), and every worker holds the
write end of its pool's call queue, so no worker ever reads the EOF that
would end it: a killed run left its fork server, workers and resource
tracker alive for good. (The resource tracker ends by itself once every
process holding its pipe is gone: the run, the fork server, the workers.)

The fork server watches its parent from a thread, by ``os.getppid()``: the
kernel gives an orphan another parent, so a change means the run is gone.
(Forking beside that thread is safe: it only sleeps and asks for a PID, and
holds no lock a worker could inherit locked.)
Not ``PR_SET_PDEATHSIG`` there: that signal comes when the *thread* that
forked the fork server ends, and the fork server is started by whichever
thread first submits to a pool (a Prefect task's, which may end long before
the run). Each worker, forked by the fork server's one serving thread, does
get ``PR_SET_PDEATHSIG`` (SIGKILL), right after the fork, so it dies with
the fork server however that ends; Linux only, elsewhere a worker ends on
the next read from its pool.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

# How often the fork server looks for its parent: a dead run's processes
# are gone within this.
WATCH_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    # Not sys.exit: this is not the main thread. Workers follow (pdeathsig).
    os._exit(0)


def _die_with_fork_server(libc: ctypes.CDLL, fork_server: int) -> None:
    """In a newly forked worker: SIGKILL when the fork server ends; at once
    if it ended before this ran."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != fork_server:
        os._exit(0)


threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True,
                 name="watch-parent").start()
if sys.platform == "linux":
    # The process's own symbols, libc's among them: loaded once, here.
    _libc = ctypes.CDLL(None)
    _server = os.getpid()
    os.register_at_fork(after_in_child=lambda: _die_with_fork_server(_libc, _server))
