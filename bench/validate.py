"""Validation: files/s per core of ``tasks.validate`` against plain pydicom loops.

Baselines over the same files: ``pydicom.dcmread(f)`` (reads everything) and
``dcmread(f, stop_before_pixels=True)`` (the header only). Ours reads the
header only too, and also checks Pixel Data's length against the image
attributes and the file's size (the bytes are read once, later, by staging).
Every method runs on the same warm worker processes (1, then 2), files in
chunks, results sent back to the parent as the flow needs them; then
``validate_files`` as the flow calls it, worker start included.

    .venv/bin/python -m bench.validate [--ct 2000] [--tiny 20000] [--scaling 100000]
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pydicom

from bench.common import median, print_table
from emulator.samples import series_spec, write_ct_series
from tasks.discover import SourceFile, iter_source
from tasks.validate import collector_paused, validate_files, worker_findings

CHUNKS = 16
PROCESSES = (1, 2)
# Each pool measurement validates at least this many files, going over a
# smaller corpus again (its files stay in the page cache): 2,000 CT slices
# once take 55 ms on two processes, where a few milliseconds of dispatching
# the first chunks and waiting for the last would decide the ratio.
MIN_FILES_PER_MEASUREMENT = 20_000


def _naive(files: list[SourceFile]) -> int:
    for source in files:
        pydicom.dcmread(source.uri)
    return len(files)


def _stop_before_pixels(files: list[SourceFile]) -> int:
    for source in files:
        pydicom.dcmread(source.uri, stop_before_pixels=True)
    return len(files)


def _ours(files: list[SourceFile]) -> Sequence[object]:
    """What validate_files runs in a worker, and what it sends back."""
    return worker_findings([source.uri for source in files], [source.size for source in files])


METHODS: dict[str, Callable[[list[SourceFile]], object]] = {
    "pydicom.dcmread(f)": _naive,
    "dcmread(stop_before_pixels=True)": _stop_before_pixels,
    "tasks.validate (ours)": _ours,
}
BASELINE = "dcmread(stop_before_pixels=True)"
OURS = "tasks.validate (ours)"


def _run(name: str, files: list[SourceFile]) -> tuple[object, float]:
    """One chunk in a worker: the method's result (sent back, as the flow's
    records are) and the worker CPU seconds it took."""
    started = time.process_time()
    result = METHODS[name](files)
    return result, time.process_time() - started


def _chunks(files: list[SourceFile]) -> list[list[SourceFile]]:
    """CHUNKS chunks: few enough that the pool's cost per chunk stays small,
    enough that the last one does not leave a worker idle for long."""
    size = max(1, -(-len(files) // CHUNKS))
    return [files[i : i + size] for i in range(0, len(files), size)]


def _work(files: list[SourceFile]) -> list[SourceFile]:
    """The corpus, over again until MIN_FILES_PER_MEASUREMENT."""
    return files * -(-MIN_FILES_PER_MEASUREMENT // len(files))


def _warm(pool: ProcessPoolExecutor, processes: int) -> None:
    """Every worker started and its imports done before any timing."""
    list(pool.map(time.sleep, [0.2] * processes))


Rates = dict[tuple[str, str, int], float]


def measure_pools(corpora: dict[str, list[SourceFile]], repeats: int) -> tuple[Rates, Rates]:
    """Median files/s of wall time and files per worker CPU second, per
    (corpus, method, processes). Both pools stay up and every combination
    runs once per repeat, interleaved, so that machine noise hits them alike.
    The CPU rate shows what a process does with a core it gets: on a shared
    machine the second core is not always there to get."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tasks.validate", __name__])
    samples: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}
    with ExitStack() as stack:
        pools = {n: stack.enter_context(ProcessPoolExecutor(n, mp_context=context))
                 for n in PROCESSES}
        for n, pool in pools.items():
            _warm(pool, n)
        for _ in range(repeats):
            for corpus, corpus_files in corpora.items():
                files = _work(corpus_files)
                chunks = _chunks(files)
                for name in METHODS:
                    for n, pool in pools.items():
                        started = time.perf_counter()
                        with collector_paused():  # as validate_files receives records
                            done = list(pool.map(_run, [name] * len(chunks), chunks))
                        seconds = time.perf_counter() - started
                        samples.setdefault((corpus, name, n), []).append(len(files) / seconds)
                        cpu.setdefault((corpus, name, n), []).append(
                            len(files) / sum(cpu_seconds for _, cpu_seconds in done)
                        )
    return ({key: median(values) for key, values in samples.items()},
            {key: median(values) for key, values in cpu.items()})


ENTRY_POINT_CALLS: dict[str, tuple[int, Callable[[list[SourceFile]], object]]] = {
    "1 worker": (1, lambda files: files),
    # What the flow passes: the first chunk's time decides whether workers pay off.
    "2 workers, list": (2, lambda files: files),
    # No length to project from: always the worker pool.
    "2 workers, stream": (2, iter),
}


def measure_entry_point(
    corpora: dict[str, list[SourceFile]], repeats: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """validate_files as the flow calls it: (median s, first call s) per
    (corpus, call); the process's first pool starts the fork server."""
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for corpus, files in corpora.items():
            for call, (workers, given) in ENTRY_POINT_CALLS.items():
                started = time.perf_counter()
                validate_files(given(files), workers=workers)  # type: ignore[arg-type]
                times.setdefault((corpus, call), []).append(time.perf_counter() - started)
    return {key: (median(values), values[0]) for key, values in times.items()}


def build_corpora(root: Path, ct: int, tiny: int) -> dict[str, list[SourceFile]]:
    write_ct_series(root / "ct", ct, spec=series_spec("bench-ct"))
    return {
        "512x512 CT": list(iter_source(str(root / "ct"))),
        "8x8 tiny": _tiny_corpus(root / "tiny", tiny),
    }


def _tiny_corpus(folder: Path, count: int) -> list[SourceFile]:
    per_series = 500
    for index in range(0, count, per_series):
        write_ct_series(folder / f"s{index:06d}", min(per_series, count - index),
                        spec=series_spec(f"bench-tiny-{index}"), rows=8, columns=8)
    return list(iter_source(str(folder)))


def report(
    corpora: dict[str, list[SourceFile]],
    rates: Rates,
    cpu_rates: Rates,
    entry: dict[tuple[str, str], tuple[float, float]],
    entry_corpora: dict[str, list[SourceFile]],
    repeats: int,
) -> None:
    rows: list[Sequence[object]] = []
    for corpus in corpora:
        for name in METHODS:
            for processes in PROCESSES:
                rate = rates[(corpus, name, processes)]
                rows.append((
                    corpus, name, processes, rate, rate / processes,
                    rate / rates[(corpus, BASELINE, processes)],
                    rate / rates[(corpus, name, 1)], cpu_rates[(corpus, name, processes)],
                ))
    print_table(
        f"Validation, same warm worker processes for every method (median of {repeats})",
        ["corpus", "method", "processes", "files/s", "files/s per core",
         "vs stop_before_pixels", "vs 1 process", "files per worker CPU s"],
        rows,
    )
    entry_rows = []
    for corpus, files in entry_corpora.items():
        single = entry[(corpus, "1 worker")][0]
        for call in ENTRY_POINT_CALLS:
            seconds, first = entry[(corpus, call)]
            entry_rows.append((corpus, len(files), call, seconds, len(files) / seconds,
                               single / seconds, first))
    print_table(
        f"validate_files() as the flow calls it, worker start included (median of {repeats})",
        ["corpus", "files", "call", "median s", "files/s", "vs 1 worker", "first call s"],
        entry_rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=2000, help="512x512 CT slices")
    parser.add_argument("--tiny", type=int, default=20000, help="8x8 slices")
    parser.add_argument("--scaling", type=int, default=100000,
                        help="8x8 slices for validate_files on 1 and 2 workers")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        corpora = build_corpora(Path(tmp), args.ct, args.tiny)
        # Large enough that validate_files starts workers (over ~2 s of work).
        scaling = {f"8x8 tiny, {args.scaling:,}": _tiny_corpus(Path(tmp) / "many", args.scaling)}
        entry = measure_entry_point({**corpora, **scaling}, args.repeats)
        rates, cpu_rates = measure_pools(corpora, args.repeats)
        report(corpora, rates, cpu_rates, entry, {**corpora, **scaling}, args.repeats)


if __name__ == "__main__":
    main()
