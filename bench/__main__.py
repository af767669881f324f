"""``make bench``: every benchmark, one table each."""

from __future__ import annotations

from bench import emulator_service


def main() -> None:
    emulator_service.main([])


if __name__ == "__main__":
    main()
