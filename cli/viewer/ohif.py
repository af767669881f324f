"""The OHIF viewer the project serves: one pinned build of ``@ohif/app``
from the npm registry, checked against the checksum recorded here.

The package's ``dist/`` is OHIF already built (HTML, JavaScript bundles,
WebAssembly codecs, an HTJ2K decoder among them): nothing is compiled here,
and nothing is fetched when the viewer runs (3.13.2's ``index.html`` and
bundles load only from the site root; the one external URL in
``app-config.js``, OHIF's demo server, is replaced by ours). ``make viewer``
(part of ``make install``) runs this module: ``npm pack`` fetches the
tarball, its SHA-512 must equal :data:`INTEGRITY` (the registry's
``dist.integrity`` for this version), and only ``dist/`` is unpacked, into a
git-ignored folder. To move to another version, change both constants (``npm
view @ohif/app@VERSION dist.integrity``) and run the browser test.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.13.2"
INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq"
             "+jd5xXZB9E8EA==")
PACKAGE = f"@ohif/app@{VERSION}"
# Beside .venv and .awscli, in the project the command runs from.
FILES = Path(__file__).resolve().parents[2] / ".viewer" / f"ohif-{VERSION}"
# Written last: a folder without it is an unpacking that did not finish.
_COMPLETE = ".complete"
GET_IT = "`make viewer` (or `make install`) fetches it with npm"


class FetchError(Exception):
    pass


def installed(folder: Path | None = None) -> bool:
    folder = folder or FILES
    return (folder / _COMPLETE).is_file() and (folder / "index.html").is_file()


def missing_message(folder: Path | None = None) -> str:
    return f"the OHIF viewer files ({PACKAGE}) are not in {folder or FILES}: {GET_IT}."


def integrity_of(tarball: Path) -> str:
    """npm's ``sha512-<base64>`` of a file, the form the registry records."""
    digest = hashlib.sha512()
    with tarball.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def unpack_dist(tarball: Path, folder: Path, expected: str = INTEGRITY) -> None:
    """``package/dist/`` of a checked npm tarball, as ``folder``; anything
    else in it (or a tarball of other bytes) is refused.

    Raises:
        FetchError: the checksum differs, or the tarball has no ``dist/``.
    """
    found = integrity_of(tarball)
    if found != expected:
        raise FetchError(f"{tarball.name}: checksum {found} is not the recorded {expected}; "
                         "nothing was unpacked")
    staging = Path(tempfile.mkdtemp(prefix=".ohif-", dir=folder.parent))
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            if not members:
                raise FetchError(f"{tarball.name} has no package/dist/")
            # The "data" filter refuses links and paths that leave the folder.
            archive.extractall(staging, members=members, filter="data")
        (staging / "package" / "dist" / _COMPLETE).write_text(f"{PACKAGE} {expected}\n")
        shutil.rmtree(folder, ignore_errors=True)
        (staging / "package" / "dist").rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(folder: Path) -> None:
    """``npm pack`` the pinned version into a temporary folder, then unpack it.

    Raises:
        FetchError: npm is missing or failed, or the checksum differs.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (Debian: apt-get install npm)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        done = subprocess.run([npm, "pack", PACKAGE, "--pack-destination", download],
                              capture_output=True, text=True, check=False)
        tarballs = list(Path(download).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"npm pack {PACKAGE} failed: {last}")
        unpack_dist(tarballs[0], folder)


def main() -> int:
    """``make viewer``: fetch once; a run with the files in place does nothing.
    Without npm it only warns: the pipeline works without the viewer, and
    ``dicom-import view`` says how to get it."""
    if installed():
        return 0
    if shutil.which("npm") is None:
        print("make viewer: npm is not installed, so `dicom-import view` has no viewer: "
              "install npm (Debian: apt-get install npm), then run make viewer.",
              file=sys.stderr)
        return 0
    print(f"Fetching the OHIF viewer ({PACKAGE}) for `dicom-import view` into {FILES}")
    try:
        fetch(FILES)
    except FetchError as error:
        print(f"make viewer: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
