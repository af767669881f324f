"""A ``dicom-import view`` server in the test's process, on a stand-in for
OHIF's files, and a browser-like client let in by its URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from botocore.credentials import Credentials

from cli.viewer.proxy import Upstream
from cli.viewer.server import ViewerServer
from cli.viewer.static import ViewerConfig

INDEX = "<!doctype html><script src=\"/app-config.js\"></script><div id=root></div>"


def stand_in_ohif(folder: Path) -> Path:
    """A folder laid out as OHIF's dist/: index.html and a bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "app.bundle.0123.js").write_text("console.log('ohif');")
    return folder


@contextmanager
def viewer(files: Path, upstream: Upstream, key: tuple[str, str] = ("local", "local"),
           host: str = "127.0.0.1", port: int = 0) -> Iterator[ViewerServer]:
    credentials = Credentials(*key)
    with ViewerServer(host, port, files, ViewerConfig(upstream, "test-store"),
                      credentials.get_frozen_credentials) as server:
        yield server


@contextmanager
def let_in(server: ViewerServer) -> Iterator[httpx.Client]:
    """A client that opened the server's URL, so holds its cookie."""
    with httpx.Client(base_url=server.origin, timeout=60) as client:
        entered = client.get(server.url)
        assert entered.status_code == 303, entered.text
        yield client


def nowhere() -> Upstream:
    """An upstream where nothing listens: a request forwarded there is a 502,
    so any other answer was given before forwarding."""
    return Upstream("http://127.0.0.1:9", "0" * 32, "us-east-1")


def header_names(response: Any) -> set[str]:
    return {name.lower() for name in response.headers}
