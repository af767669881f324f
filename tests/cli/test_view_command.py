"""``dicom-import view`` as a user meets it: the command's refusals, the one
URL it prints, OHIF's files and the app-config written for them, and the
pinned OHIF package ``make viewer`` unpacks."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from cli.main import main
from cli.viewer import ohif
from cli.viewer.proxy import HTJ2K_FRAMES, Upstream
from emulator.edge.server import LocalService
from tests.cli.viewer import let_in, nowhere, stand_in_ohif, viewer

REPO = Path(__file__).resolve().parents[2]


def _config(script: str) -> dict:
    """``window.config`` as app-config.js sets it."""
    found = re.search(r"window\.config = (\{.*?\});\n", script, re.DOTALL)
    assert found, script
    return json.loads(found[1])


def test_app_config_points_ohif_at_the_proxy_on_this_origin(tmp_path: Path) -> None:
    files = stand_in_ohif(tmp_path)
    (files / "app-config.js").write_text("window.config = {wadoRoot: 'https://cdn.example'};")
    upstream = Upstream("https://dicom-medical-imaging.eu-west-1.amazonaws.com", "a" * 32,
                        "eu-west-1")
    with viewer(files, upstream) as server, let_in(server) as browser:
        answer = browser.get("/app-config.js")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/javascript")
    assert "cdn.example" not in answer.text
    config = _config(answer.text)
    [source] = config["dataSources"]
    settings = source["configuration"]
    root = f"{server.origin}/dicomweb"
    assert settings["wadoRoot"] == settings["qidoRoot"] == settings["wadoUriRoot"] == root
    assert settings["supportsFuzzyMatching"] is False
    assert settings["imageRendering"] == settings["thumbnailRendering"] == "wadors"
    assert settings["acceptHeader"] == [HTJ2K_FRAMES]
    assert settings["bulkDataURI"]["startsWith"] == (
        f"https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/{'a' * 32}/")
    assert settings["bulkDataURI"]["prefixWith"] == root + "/"
    assert config["defaultDataSourceName"] == source["sourceName"]
    # A non-primary image set's page moves the roots under its ID.
    assert "/dicomweb/imagesets/" in answer.text and "imageSetId" in answer.text


def test_ohif_routes_are_its_index_and_missing_files_are_404(tmp_path: Path) -> None:
    with viewer(stand_in_ohif(tmp_path / "ohif"), nowhere()) as server, \
            let_in(server) as browser:
        (tmp_path / "secret.txt").write_text("not served")
        for route in ("/", "/viewer", "/viewer/dicomweb", "/segmentation"):
            page = browser.get(route, params={"StudyInstanceUIDs": "1.2.3"})
            assert page.status_code == 200 and "app-config.js" in page.text, route
        assert browser.get("/app.bundle.0123.js").text == "console.log('ohif');"
        assert browser.get("/app.bundle.missing.js").status_code == 404
        assert browser.get("/..%2Fsecret.txt").status_code == 404
        assert browser.post("/").status_code == 405


def _tarball(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / "ohif-app.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def test_only_dist_of_the_checked_package_is_unpacked(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path, {"package/package.json": b"{}",
                                  "package/dist/index.html": b"<html>",
                                  "package/dist/assets/logo.svg": b"<svg>"})
    folder = tmp_path / "viewer" / "ohif"
    folder.parent.mkdir()
    ohif.unpack_dist(tarball, folder, expected=ohif.integrity_of(tarball))
    assert ohif.installed(folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  ) == [".complete", "assets/logo.svg", "index.html"]


def test_a_package_of_other_bytes_is_refused_and_nothing_unpacked(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path, {"package/dist/index.html": b"<script>evil</script>"})
    folder = tmp_path / "ohif"
    with pytest.raises(ohif.FetchError, match="checksum"):
        ohif.unpack_dist(tarball, folder)
    assert not folder.exists()
    escaping = _tarball(tmp_path, {"package/dist/../../../escaped": b"x"})
    with pytest.raises(tarfile.OutsideDestinationError):
        ohif.unpack_dist(escaping, folder, expected=ohif.integrity_of(escaping))
    assert not folder.exists() and not (tmp_path / "escaped").exists()


@pytest.fixture
def store(local_aws: LocalService) -> LocalService:
    boto3.client("medical-imaging").create_datastore(datastoreName="viewer-store")
    return local_aws


@pytest.fixture
def fake_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    files = stand_in_ohif(tmp_path / "ohif")
    (files / ".complete").write_text("test")
    monkeypatch.setattr(ohif, "FILES", files)
    return files


def test_a_mistyped_data_store_lists_the_closest_names(
    store: LocalService, fake_files: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["view", "--datastore", "viewer-stor"]) == 2
    err = capsys.readouterr().err
    assert err == ("dicom-import view: --datastore viewer-stor: no data store has this name; "
                   "the closest: viewer-store.\n")
    assert "viewer-stor" not in {d["datastoreName"] for d in boto3.client(
        "medical-imaging").list_datastores()["datastoreSummaries"]}


def test_without_a_data_store_it_says_which_option(
    local_aws: LocalService, fake_files: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICOM_IMPORT_DATASTORE", raising=False)
    assert main(["view"]) == 2
    assert capsys.readouterr().err.startswith("dicom-import view: --datastore: ")


def test_without_the_viewer_files_it_says_how_to_get_them(
    store: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ohif, "FILES", tmp_path / "not-fetched")
    assert main(["view", "--datastore", "viewer-store"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make viewer" in err and str(tmp_path / "not-fetched") in err


_WITH_FILES = ("import sys; from pathlib import Path; import cli.viewer.ohif as ohif; "
               "ohif.FILES = Path(sys.argv[1]); from cli.main import main; "
               "sys.exit(main(sys.argv[2:]))")


@pytest.fixture
def running_view(store: LocalService, fake_files: Path) -> Iterator[subprocess.Popen[str]]:
    """``dicom-import view --host 0.0.0.0`` in a process of its own."""
    env = {**os.environ, **store.env(), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", _WITH_FILES, str(fake_files), "view", "--datastore",
         "viewer-store", "--host", "0.0.0.0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_it_prints_one_url_warns_off_loopback_and_stops_on_a_signal(
    running_view: subprocess.Popen[str], stop: signal.Signals,
) -> None:
    assert running_view.stdout is not None
    lines = []
    for line in running_view.stdout:  # until the URL; the server is up by then
        lines.append(line)
        if line.startswith("Open in a browser:"):
            break
    assert sum("http://" in line for line in lines) == 2, lines  # the endpoint, the URL
    assert any(line.startswith("Warning: listening on 0.0.0.0") for line in lines), lines
    url = lines[-1].removeprefix("Open in a browser:").strip()
    port = url.split(":")[2].split("/")[0]
    with httpx.Client() as browser:
        entered = browser.get(url.replace(url.split("/")[2], f"127.0.0.1:{port}"))
        assert entered.status_code == 303
        assert browser.get(f"http://127.0.0.1:{port}/").status_code == 200
    running_view.send_signal(stop)
    out, err = running_view.communicate(timeout=60)
    assert running_view.returncode == 0, err
    assert "Viewer stopped." in out and "Traceback" not in err


def test_a_folder_no_local_service_kept_is_refused(
    fake_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Never a new, empty service where the user mistyped a folder."""
    assert main(["view", "--local-data-dir", str(tmp_path / "typo"), "--datastore", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dicom-import view: --local-data-dir {tmp_path / 'typo'}: ")
    assert err.count("\n") == 1 and not (tmp_path / "typo").exists()


def test_a_data_folder_another_service_holds_is_refused(
    fake_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with LocalService(data_dir=tmp_path / "state"):
        code = main(["view", "--local-data-dir", str(tmp_path / "state"), "--datastore", "x"])
    assert code == 2
    err = capsys.readouterr().err
    assert "in use by another local service" in err and err.count("\n") == 1
