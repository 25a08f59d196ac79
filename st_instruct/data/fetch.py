"""Verified file transfer: stream a URL (or build a derived file) into place only if its sha256 is right.

Only :mod:`urllib.request` is used (no extra dependency). Data go into a temp file next to the target (so the
final rename is atomic), are hashed on the way, and the temp file is deleted whatever happens; a target
is never left half-written or unverified. Which files to fetch, from where, is the registry's business.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from st_instruct.data.stdata import STDataError


class ChecksumError(STDataError):
    """A downloaded file whose sha256 is not the expected one (the file is deleted)."""


class DownloadError(STDataError):
    """A file that could not be fetched (network or HTTP error) or may not be accepted unverified."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_verified(url: str, target: Path, expected: str | None, label: str) -> None:
    """Stream ``url`` into a temp file next to ``target``; move it into place only if its sha256 is ``expected``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        found = digest.hexdigest()
        if expected is not None and found != expected.lower():
            raise ChecksumError(f"checksum mismatch for {label} downloaded from {url}: expected sha256 {expected}, "
                                f"found {found}. The file was deleted; the upstream copy may have changed or the "
                                "transfer was corrupted. Retry, or pass expected_sha256= if you trust the new file.")
        if expected is None:
            print(f"{label}: accepted UNVERIFIED, sha256 {found} (pin it with --sha256 {found})", file=sys.stderr)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"could not download {label} from {url}: {err}. Check the network, or set "
                            "$ST_INSTRUCT_DOWNLOAD_BASE / base_url= to a mirror laid out like ../shared/data."
                            ) from err
    finally:
        tmp.unlink(missing_ok=True)


def remove_empty_dirs(created: list[Path]) -> None:
    """Remove the directories in ``created`` that are empty, deepest first (undo of a failed download)."""
    for d in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty (another file landed there) or already gone: leave it
            pass


def build_verified(build: Callable[[Path, Path], None], root: Path, target: Path, expected: str | None) -> None:
    """Build a derived file into a temp path, then move it into place (sources are verified already)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        build(root, tmp)
        found = sha256_file(tmp)
        if expected is not None and found != expected.lower():
            # The inputs are verified and the recipe is deterministic, so a different hash means a different
            # zlib/numpy wrote the same array; say so instead of refusing a correct file.
            print(f"note: rebuilt {target.name} has sha256 {found}, not the recorded {expected}; its sources were "
                  "verified, so the difference is in compression, not in the data", file=sys.stderr)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
