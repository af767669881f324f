"""Who gets into ``dicom-import view``: the browser that opened its URL, asking
for the server by its own address, and no other page or user."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.viewer.gate import HostCheck
from cli.viewer.server import ViewerServer
from tests.cli.viewer import header_names, let_in, nowhere, stand_in_ohif, viewer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerServer]:
    files = stand_in_ohif(tmp_path_factory.mktemp("ohif"))
    with viewer(files, nowhere()) as running:
        yield running


def test_the_url_sets_a_strict_http_only_cookie_and_redirects_without_the_token(
    server: ViewerServer,
) -> None:
    with httpx.Client(base_url=server.origin) as client:
        entered = client.get(f"/viewer?StudyInstanceUIDs=1.2.3&token={server.token}")
        assert entered.status_code == 303
        assert entered.headers["Location"] == "/viewer?StudyInstanceUIDs=1.2.3"
        cookie = entered.headers["Set-Cookie"]
        assert cookie.startswith(f"dicom-import-viewer-{server.port}={server.token};")
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {
            part.strip() for part in cookie.split(";")}
        page = client.get("/viewer?StudyInstanceUIDs=1.2.3")
        assert page.status_code == 200 and "app-config.js" in page.text


@pytest.mark.parametrize("path", ["/", "/index.html", "/app.bundle.0123.js", "/app-config.js",
                                  "/viewer", "/dicomweb/studies", "/dicomweb/nothing"])
def test_without_the_cookie_nothing_is_served(server: ViewerServer, path: str) -> None:
    others = {
        "none": {},
        "a wrong token": {"params": {"token": "guessed"}},
        "a wrong cookie": {"cookies": {f"dicom-import-viewer-{server.port}": "guessed"}},
        "another viewer's cookie": {"cookies": {"dicom-import-viewer-1": server.token}},
    }
    for name, given in others.items():
        with httpx.Client(base_url=server.origin, **given) as client:  # type: ignore[arg-type]
            refused = client.get(path)
        assert refused.status_code == 401, name
        assert "ohif" not in refused.text and "window.config" not in refused.text


@pytest.mark.parametrize("host", ["rebound.example:{port}", "127.0.0.1:1", "127.0.0.1",
                                  "127.0.0.1.nip.io:{port}", "user@127.0.0.1:{port}", ""])
def test_a_host_that_is_not_the_servers_is_refused(server: ViewerServer, host: str) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name;
    it gets nothing, with the token or the cookie."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for path in (f"/?token={server.token}", "/", "/dicomweb/studies"):
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host.format(port=server.port))
        connection.putheader("Cookie", f"dicom-import-viewer-{server.port}={server.token}")
        connection.endheaders()
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 403, (host, path)
        assert answer.getheader("Set-Cookie") is None
    connection.close()


def test_loopback_spellings_are_its_address(server: ViewerServer) -> None:
    with let_in(server) as client:
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
            assert client.get("/", headers={"Host": host}).status_code == 200


def test_no_cors_for_any_origin(server: ViewerServer) -> None:
    with let_in(server) as client:
        for path in ("/", "/app-config.js", "/dicomweb/studies"):
            answer = client.get(path, headers={"Origin": "https://elsewhere.example"})
            assert not {n for n in header_names(answer) if n.startswith("access-control-")}
        preflight = client.options("/dicomweb/studies", headers={
            "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"})
        assert preflight.status_code >= 400
        assert not {n for n in header_names(preflight) if n.startswith("access-control-")}


def test_every_answer_refuses_framing_and_referrers(server: ViewerServer) -> None:
    with httpx.Client(base_url=server.origin) as client:
        for answer in (client.get("/"), client.get(server.url)):
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(("bound", "host", "allowed"), [
    ("127.0.0.1", "127.0.0.1:8000", True),
    ("127.0.0.1", "localhost:8000", True),
    ("127.0.0.1", "[::1]:8000", True),
    ("127.0.0.1", "127.0.0.1:8001", False),
    ("127.0.0.1", "example.com:8000", False),
    ("192.0.2.10", "192.0.2.10:8000", True),
    ("192.0.2.10", "localhost:8000", False),
    ("0.0.0.0", "192.0.2.10:8000", True),
    ("0.0.0.0", "rebound.example:8000", False),
])
def test_host_check(bound: str, host: str, allowed: bool) -> None:
    assert HostCheck(bound, 8000).allows(host) is allowed


def test_a_port_in_use_is_an_error_before_anything_is_served(tmp_path: Path,
                                                             server: ViewerServer) -> None:
    with pytest.raises(OSError), viewer(stand_in_ohif(tmp_path), nowhere(),
                                        port=server.port):
        pass
