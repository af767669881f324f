"""``make bench``: every benchmark, one table each (``bench/README.md`` holds
the latest tables from this machine)."""

from __future__ import annotations

import importlib

BENCHES = ("emulator_service", "validate", "stage", "manifest", "job_slots", "end_to_end",
           "verify", "fanout", "stow")


def main() -> None:
    for name in BENCHES:
        print(f"\n=== bench.{name} ===", flush=True)
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
