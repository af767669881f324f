"""``dicom-import view`` in a real browser, as a new user meets it: ``make
demo``, then the command it prints, then its URL in Chromium (Debian's,
driven by Playwright, never a downloaded one). The study list shows the
demo's studies; the generated CT study, opened at the viewer path its report
rows give, draws an image; what the viewer must refuse, it refuses."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pydicom
import pytest

from cli.viewer import ohif
from tasks.viewer_paths import viewer_path
from tests.cli.test_demo import demo
from tests.operations.test_served import CHROMIUM, CHROMIUM_ARGS

# The demo, the viewer and Chromium share one set-up: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.heavy(minutes=5),
              pytest.mark.xdist_group("viewer-browser")]

REPO = Path(__file__).resolve().parents[2]
# Waits on page conditions, long enough for a loaded two-core machine.
PAGE_TIMEOUT_MS = 180_000


# The viewport's canvas holds an image: pixel values that are not all one.
DRAWN = """() => {
    const canvas = document.querySelector('canvas.cornerstone-canvas');
    if (!canvas || !canvas.width) return false;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                          canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < pixels.length; i += 4 * 31) seen.add(pixels[i]);
    return seen.size > 16;
}"""


@dataclass(frozen=True)
class Viewing:
    folder: Path  # the demo's folder
    url: str  # the one URL the command printed
    origin: str
    report: pd.DataFrame  # the demo run's per-file report


def _skip_without_a_browser_or_viewer() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing: `apt-get install chromium chromium-driver` "
                    "enables this test")
    if not ohif.installed():
        pytest.skip(f"{ohif.missing_message()} It enables this test.")
    pytest.importorskip("playwright.sync_api")


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output, line by line, without blocking the test on it."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.fixture(scope="module")
def viewing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewing]:
    _skip_without_a_browser_or_viewer()
    root = tmp_path_factory.mktemp("viewer-browser")
    done = demo(root)
    command = shlex.split(done.stdout.rstrip().splitlines()[-1])
    assert command[:2] == ["dicom-import", "view"], command
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PREFECT_HOME=str(root / "prefect-home"), PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "cli", *command[1:], "--verbose"],
                               cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines = _lines(process)
        printed: list[str] = []
        deadline = time.monotonic() + 300
        while not printed or not printed[-1].startswith("Open in a browser:"):
            assert process.poll() is None and time.monotonic() < deadline, printed
            with contextlib.suppress(queue.Empty):
                printed.append(lines.get(timeout=1))
        url = printed[-1].removeprefix("Open in a browser:").strip()
        assert sum("?token=" in line for line in printed) == 1, printed
        [parts] = {p.parent for p in (root / "demo-output" / "reports").rglob("part-*.parquet")}
        yield Viewing(root / "demo-output", url, url.split("/?")[0], pd.read_parquet(parts))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(viewing: Viewing) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, viewing: Viewing) -> Iterator[Any]:
    """A page of a fresh browser context, and every request it made."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    opened = context.new_page()
    requested: list[str] = []
    opened.on("request", lambda request: requested.append(request.url))
    opened.requested = requested
    try:
        yield opened
    finally:
        context.close()


def _studies(viewing: Viewing) -> dict[str, str]:
    """Description of each study the demo imported, as OHIF words a missing one."""
    imported = viewing.report.dropna(subset=["image_set_id"]).drop_duplicates(
        "study_instance_uid")
    described = {}
    for study, source in zip(imported["study_instance_uid"], imported["source_uri"],
                             strict=True):
        header = pydicom.dcmread(str(source), stop_before_pixels=True)
        described[str(study)] = str(header.get("StudyDescription") or "No Description")
    return described


def _leaves_the_origin(page: Any, viewing: Viewing) -> list[str]:
    return [url for url in page.requested
            if not url.startswith((viewing.origin + "/", "data:", "blob:"))]


def test_the_study_list_shows_the_demo_studies(page: Any, viewing: Viewing) -> None:
    from playwright.sync_api import expect

    expected = _studies(viewing)
    assert len(expected) == 6 and "Synthetic CT" in expected.values()
    page.goto(viewing.url)
    assert "token" not in page.url  # the redirect took it out
    rows = page.locator("tbody tr").filter(has_text=re.compile(r"\d\d-[A-Z][a-z]{2}-\d{4}"))
    expect(rows).to_have_count(len(expected), timeout=PAGE_TIMEOUT_MS)
    shown = sorted(rows.nth(i).locator("td").nth(3).inner_text().strip()
                   for i in range(len(expected)))
    assert shown == sorted(expected.values())
    # OHIF pages through QIDO-RS rather than asking for every study at once.
    assert any("/dicomweb/studies?" in url and "limit=" in url and "offset=" in url
               for url in page.requested)
    assert _leaves_the_origin(page, viewing) == []


def test_the_ct_study_opens_at_its_viewer_path_and_draws_an_image(
    page: Any, viewing: Viewing, tmp_path: Path,
) -> None:
    ct = viewing.report[viewing.report["source_uri"].str.contains("/ct-study/")
                        & viewing.report["status"].eq("imported")]
    [path] = set(ct["viewer_path"])  # one study, three primary image sets
    page.goto(viewing.url)
    page.goto(viewing.origin + path)
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    # The canvas is drawn once frames arrive and decode.
    page.wait_for_function(DRAWN, timeout=PAGE_TIMEOUT_MS, polling=1000)
    screenshot = tmp_path / "ct-study.png"
    page.screenshot(path=str(screenshot))
    print(f"\nThe CT study in the viewer: {screenshot}")
    assert _leaves_the_origin(page, viewing) == []


def test_an_image_set_opens_by_its_id(page: Any, viewing: Viewing) -> None:
    """The page parameter a non-primary image set's viewer path carries roots
    OHIF's reads at that image set (the demo's are primary: one of the CT's
    three stands in)."""
    ct = viewing.report[viewing.report["source_uri"].str.contains("/ct-study/series-2/")]
    image_set = str(ct["image_set_id"].iloc[0])
    study = str(ct["study_instance_uid"].iloc[0])
    path = viewer_path(study, image_set, is_primary=False)
    assert path == f"/viewer?StudyInstanceUIDs={study}&imageSetId={image_set}"
    page.goto(viewing.url)
    page.goto(viewing.origin + path)
    page.locator("canvas.cornerstone-canvas").first.wait_for(state="visible")
    page.wait_for_function(DRAWN, timeout=PAGE_TIMEOUT_MS, polling=1000)
    reads = [url for url in page.requested if "/dicomweb/" in url]
    assert reads and all(f"/dicomweb/imagesets/{image_set}/" in url for url in reads), reads


def test_what_it_must_refuse_it_refuses(page: Any, viewing: Viewing) -> None:
    page.goto(viewing.url)
    with httpx.Client(base_url=viewing.origin, timeout=60) as stranger:
        assert stranger.get("/").status_code == 401  # no token, no cookie
        assert stranger.get("/dicomweb/studies").status_code == 401
        host = viewing.origin.removeprefix("http://").replace("127.0.0.1", "rebound.example")
        assert stranger.get(viewing.url, headers={"Host": host}).status_code == 403
    # The browser that is let in: DICOMweb reads only, GET only.
    assert page.request.get(viewing.origin + "/dicomweb/studies").status == 200
    for refused in ("/dicomweb/datastore", "/dicomweb/studies/1.2/metadata",
                    "/dicomweb/imageSet/" + "0" * 32 + "/getImageSetMetadata"):
        assert page.request.get(viewing.origin + refused).status == 403, refused
    assert page.request.post(viewing.origin + "/dicomweb/studies", data=b"x").status == 405
