"""Worker pools start without importing the caller's program again in every worker."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

# A program's main module: its top level takes a function from ``heavy``, which
# records the process importing it; then it starts two pools, as a run does
# one a window.
PROGRAM = textwrap.dedent(
    """
    import os
    import sys

    from heavy import weigh
    from tasks.worker_processes import worker_pool

    if __name__ == "__main__":
        workers = set()
        for _ in range(2):
            with worker_pool(2) as pool:
                workers.update(pool.submit(os.getpid).result() for _ in range(4))
        print(" ".join(map(str, sorted(workers))))
    """
)
HEAVY = textwrap.dedent(
    """
    import os

    with open(os.environ["IMPORTED_BY"], "a") as record:
        record.write(f"{os.getpid()}\\n")


    def weigh() -> int:
        return 1
    """
)


@pytest.mark.parametrize("run_as", ["module", "script"])
def test_workers_do_not_import_the_main_modules_imports_again(
    tmp_path: Path, run_as: str
) -> None:
    """multiprocessing runs the main module again in each worker (as
    ``__mp_main__``); what it imports must load once, in the fork server, or
    every worker of every pool pays for it (0.7 s a worker for a bench)."""
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "heavy.py").write_text(HEAVY)
    record = tmp_path / "imported-by"
    command = [sys.executable, "-m", "program"] if run_as == "module" else [
        sys.executable, str(tmp_path / "program.py")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
             "IMPORTED_BY": str(record)},
    )

    assert done.returncode == 0, done.stderr
    workers = {int(pid) for pid in done.stdout.split()}
    importers = {int(pid) for pid in record.read_text().split()}
    assert workers, "the pools ran no work"
    assert not workers & importers, "a worker imported the main module's imports again"
    assert len(importers) == 2  # the program and its fork server
    assert "RuntimeWarning" not in done.stderr


STOPPED_WHILE_STARTING = textwrap.dedent(
    """
    import os
    import signal
    import threading
    import time

    from tasks.worker_processes import worker_pool


    def press_ctrl_c() -> None:
        \"\"\"A terminal's Ctrl-C, to the whole process group, again and again
        for 3 s, while the fork server's interpreter starts, while it imports
        what it preloads (seconds: Prefect among it) and while workers start.\"\"\"
        for _ in range(300):
            os.killpg(0, signal.SIGINT)
            time.sleep(0.01)


    if __name__ == "__main__":
        stops = []
        signal.signal(signal.SIGINT, lambda *_: stops.append(1))  # the CLI's first Ctrl-C
        threading.Thread(target=press_ctrl_c).start()
        workers = set()
        for _ in range(2):
            with worker_pool(2) as pool:
                workers.update(pool.submit(os.getpid).result() for _ in range(4))
        print(len(workers), len(stops))
    """
)


def test_ctrl_c_while_workers_start_leaves_them_working(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group; the run decides what it
    means, so neither the fork server, still importing what it preloads, nor
    a starting worker may die of it."""
    (tmp_path / "program.py").write_text(STOPPED_WHILE_STARTING)
    done = subprocess.run(
        [sys.executable, "program.py"], capture_output=True, text=True, timeout=300,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    workers, stops = map(int, done.stdout.split())
    assert workers >= 2 and stops > 0


KILLED = textwrap.dedent(
    """
    import os
    import threading
    import time

    from tasks.worker_processes import worker_pool

    if __name__ == "__main__":
        pool = worker_pool(2)
        # The fork server is started by a thread that ends at once, as a
        # Prefect task's thread may: one worker busy, one idle.
        starter = threading.Thread(target=pool.submit, args=(time.sleep, 600))
        starter.start()
        starter.join()
        pool.submit(os.getpid).result()
        print("ready", flush=True)
        time.sleep(600)
    """
)


def _alive(process: psutil.Process) -> bool:
    """Not a zombie: a dead orphan may wait a while for its new parent's
    reaping, which is not this test's business."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_program_leaves_no_process_of_its_pools(tmp_path: Path) -> None:
    """SIGKILL, so nothing of the program runs to clean up: its fork server,
    the workers (busy or idle) and the resource tracker end by themselves."""
    (tmp_path / "program.py").write_text(KILLED)
    program = subprocess.Popen(
        [sys.executable, "program.py"], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    descendants: list[psutil.Process] = []
    try:
        assert program.stdout is not None
        assert program.stdout.readline() == "ready\n"
        descendants = psutil.Process(program.pid).children(recursive=True)
        # The resource tracker, the fork server and its two workers.
        assert len(descendants) == 4
        program.kill()
        program.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in descendants):
            assert time.monotonic() < deadline, [p.pid for p in descendants if _alive(p)]
            time.sleep(0.1)
    finally:
        program.kill()
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
