"""Staging: MB/s of ``tasks.stage`` to the local S3 endpoint against the AWS CLI.

Baselines over the same files and the same endpoint (the local service in a
subprocess, so client and server do not share a GIL): ``aws s3 cp
--recursive`` (the AWS CLI in its own venv, ``.awscli``, built here if
missing) and a plain boto3 loop uploading one file at a time. Each run writes
under a fresh prefix, so nothing is skipped as already staged, and what it
wrote is deleted once it is timed.

    .venv/bin/python -m bench.stage [--ct 300] [--tiny 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.common import clients, local_service, median, print_table, service_env
from emulator.samples import series_spec, write_ct_series
from tasks.batch import make_batches
from tasks.discover import iter_source
from tasks.stage import stage_batches
from tasks.statuses import StageAction
from tasks.validate import validate_files

BUCKET = "bench-stage"
ROOT = Path(__file__).resolve().parents[1]
AWS_CLI = ROOT / ".awscli" / "bin" / "aws"


def aws_cli() -> Path:
    """The AWS CLI pins its own botocore, so it lives in a venv of its own."""
    if not AWS_CLI.exists():
        subprocess.run(["python3", "-m", "venv", str(AWS_CLI.parents[1])], check=True)
        subprocess.run([str(AWS_CLI.parent / "pip"), "install", "--quiet", "awscli"],
                       check=True)
    return AWS_CLI


class Corpus:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.bytes = sum(p.stat().st_size for p in self.files)
        self.batches = make_batches(validate_files(list(iter_source(str(folder))), workers=1))


def run_ours(s3: Any, corpus: Corpus, prefix: str) -> None:
    staged = stage_batches(corpus.batches, f"s3://{BUCKET}/{prefix}", "run")
    if any(item.action is not StageAction.UPLOADED for item in staged):
        raise RuntimeError("staging did not upload every file")


def run_cli(env: dict[str, str], corpus: Corpus, prefix: str) -> None:
    subprocess.run(
        [str(aws_cli()), "s3", "cp", "--recursive", "--quiet", str(corpus.folder),
         f"s3://{BUCKET}/{prefix}/"],
        check=True, env=env,
    )


def run_boto3_loop(s3: Any, corpus: Corpus, prefix: str) -> None:
    for path in corpus.files:
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(corpus.folder)}")


def _delete(s3: Any, prefix: str) -> None:
    """moto keeps objects in memory, and a service holding more of them
    spends more time in the kernel per PUT, so that whichever method ran
    later would be slower: every method starts from the same empty bucket."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def _client_cpu_seconds() -> float:
    """CPU of this process and of its children that have ended (the CLI)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


Shares = dict[tuple[str, str], float]


def measure(corpora: list[Corpus], repeats: int) -> tuple[Shares, Shares, Shares]:
    """Median seconds per (corpus, method), methods interleaved per repeat, and
    the median share of that time the local service and the client spent on
    CPU: near 1, that process (Python, one GIL) is what limits the rate."""
    with local_service() as endpoint:
        service = next(child for child in psutil.Process().children()
                       if "local" in child.cmdline())
        env = service_env(endpoint)
        os.environ.update(env)
        s3 = clients(endpoint)[1]
        s3.create_bucket(Bucket=BUCKET)
        methods: dict[str, Callable[[Corpus, str], None]] = {
            "tasks.stage (ours)": lambda corpus, prefix: run_ours(s3, corpus, prefix),
            "aws s3 cp --recursive": lambda corpus, prefix: run_cli(env, corpus, prefix),
            "boto3 upload_file loop": lambda corpus, prefix: run_boto3_loop(s3, corpus, prefix),
        }
        times: dict[tuple[str, str], list[float]] = {}
        busy: dict[tuple[str, str], list[float]] = {}
        client: dict[tuple[str, str], list[float]] = {}
        for repeat in range(repeats):
            for corpus in corpora:
                for index, (name, method) in enumerate(methods.items()):
                    prefix = f"r{repeat}/{corpus.name}/m{index}"
                    cpu_before = sum(service.cpu_times()[:2])
                    client_before = _client_cpu_seconds()
                    started = time.perf_counter()
                    method(corpus, prefix)
                    seconds = time.perf_counter() - started
                    times.setdefault((corpus.name, name), []).append(seconds)
                    busy.setdefault((corpus.name, name), []).append(
                        (sum(service.cpu_times()[:2]) - cpu_before) / seconds
                    )
                    client.setdefault((corpus.name, name), []).append(
                        (_client_cpu_seconds() - client_before) / seconds
                    )
                    _delete(s3, prefix)
    return tuple(  # type: ignore[return-value]
        {key: median(values) for key, values in samples.items()}
        for samples in (times, busy, client)
    )


def report(
    corpora: list[Corpus], seconds: Shares, busy: Shares, client: Shares, repeats: int
) -> None:
    rows = []
    for corpus in corpora:
        cli = seconds[(corpus.name, "aws s3 cp --recursive")]
        for (name, method), value in seconds.items():
            if name != corpus.name:
                continue
            rows.append((corpus.name, len(corpus.files), corpus.bytes / 1e6, method, value,
                         corpus.bytes / 1e6 / value, len(corpus.files) / value, cli / value,
                         busy[(corpus.name, method)], client[(corpus.name, method)]))
    print_table(
        f"Staging to the local S3 endpoint (median of {repeats})",
        ["corpus", "files", "MB", "method", "median s", "MB/s", "files/s", "vs AWS CLI",
         "service CPU share", "client CPU share"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=300, help="512x512 CT slices")
    parser.add_argument("--tiny", type=int, default=3000, help="8x8 slices")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    aws_cli()
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        root = Path(tmp)
        write_ct_series(root / "ct", args.ct, spec=series_spec("bench-stage-ct"))
        write_ct_series(root / "tiny", args.tiny, spec=series_spec("bench-stage-tiny"),
                        rows=8, columns=8)
        corpora = [Corpus("512x512 CT", root / "ct"), Corpus("8x8 tiny", root / "tiny")]
        report(corpora, *measure(corpora, args.repeats), args.repeats)


if __name__ == "__main__":
    main()
