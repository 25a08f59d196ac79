"""Writing outputs so that nothing is overwritten unasked and a crash leaves nothing half-written at the final path.

Every output of the package (a built dataset, a trained model's final save, an evaluation folder, a results JSON,
the builder's fingerprint cache) is written to a temporary sibling on the same filesystem, named
``.NAME.partial-HOST-PID``, and moved into place with one ``rename`` once complete; on an error or Ctrl-C the
sibling is removed. A replaced folder is first renamed to ``.NAME.replaced-HOST-PID`` and removed after the new one
is in place. Siblings left by killed runs (their PID no longer alive on this host) are cleaned up by the next write
of the same output: a partial one is removed, a replaced one is put back when ``NAME`` is missing (the run died
between the two renames) and removed otherwise. Siblings of other hosts (a shared filesystem) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
# ".NAME.partial-HOST-PID"; also the builder cache's former "NAME.partial-PID" (no dot, no host)
_SIBLING = re.compile(r"^\.?(?P<name>.+?)\.(?P<kind>partial|replaced)-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


class OutputExistsError(FileExistsError):
    """The output path holds something and the user did not ask to replace it; the message names path and flag."""


def sibling(path: str | Path, kind: str = "partial") -> Path:
    """``.NAME.<kind>-HOST-PID`` next to ``path``: this process's temporary name for it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_siblings(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove (or restore, see the module docstring) the temporary siblings of dead processes of this host in
    ``directory``: those of ``name`` only, or of every name. Returns the entries removed or restored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cleaned = []
    for entry in directory.iterdir():
        match = _SIBLING.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if match["host"] not in (None, _HOST) or _pid_alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        if match["kind"] == "replaced" and not target.exists():
            os.replace(entry, target)
        else:
            _remove(entry)
        cleaned.append(entry)
    return cleaned


def is_nonempty(path: str | Path) -> bool:
    """A file, or a folder with anything in it."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_writable(path: str | Path, overwrite: bool, flag: str, what: str = "") -> None:
    """Raise :class:`OutputExistsError` (one line naming ``path`` and ``flag``) if ``path`` is not empty and
    ``overwrite`` is off; ``what`` says what it holds."""
    path = Path(path)
    if not overwrite and is_nonempty(path):
        holds = f" ({what})" if what else ""
        raise OutputExistsError(f"{path} already exists and is not empty{holds}; nothing was written. Pass {flag} "
                                "to replace it once the new output is complete, or choose another path")


def commit(staged: Path, path: Path, overwrite: bool, keep: Callable[[Path], bool] | None = None,
           flag: str = "--overwrite") -> None:
    """Move the complete ``staged`` folder or file to ``path``. An existing ``path``: kept (``staged`` discarded)
    when ``keep(path)`` is true, else replaced when ``overwrite``/``keep`` allow it (renamed aside, then removed),
    else :class:`OutputExistsError`."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty folder holds nothing to lose
    if not path.exists():
        os.replace(staged, path)
        return
    if keep is not None and keep(path):
        _remove(staged)
        return
    if not overwrite and keep is None:
        _remove(staged)
        check_writable(path, overwrite, flag, "written by another process meanwhile")  # raises
    if path.is_file() or staged.is_file():
        os.replace(staged, path)
        return
    aside = sibling(path, "replaced")
    os.replace(path, aside)
    os.replace(staged, path)
    _remove(aside)


@contextlib.contextmanager
def staged_output(path: str | Path, overwrite: bool = False, flag: str = "--overwrite", what: str = "",
                  keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh empty temporary folder next to ``path``; when the block ends without an error it becomes
    ``path``, else it is removed (and ``path`` is untouched).

    Args:
        path: the final folder; its parent is created.
        overwrite: replace a non-empty ``path`` (only once the new one is complete); without it a non-empty
            ``path`` is refused on entry with :class:`OutputExistsError` naming ``path``, ``flag`` and ``what``.
        keep: a cache entry's completeness check: an existing ``path`` is never refused; if it passes ``keep`` when
            the block ends (another process wrote it meanwhile), it is kept and the new copy discarded, otherwise it
            is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path.parent, path.name)
    if keep is None:
        check_writable(path, overwrite, flag, what)
    staged = sibling(path)
    _remove(staged)
    staged.mkdir()
    try:
        yield staged
        commit(staged, path, overwrite, keep, flag)
    except BaseException:
        _remove(staged)
        raise


def merge_staged(staged: Path, directory: Path, last: str) -> None:
    """Move every entry of the complete folder ``staged`` into the existing ``directory`` (replacing same-named
    entries), ``last`` last, then remove ``staged``. For a folder that must stay where it is because it also holds
    other things (a training run's ``checkpoint-N`` folders): each entry moves with one rename and ``last`` -- the
    file loaders check first -- arrives last, so an interrupted merge never looks complete. On an error the moved
    entries are taken back out and the replaced ones restored."""
    names = sorted((p.name for p in staged.iterdir()), key=lambda n: n == last)
    previous = staged / ".previous"  # inside: removed with a stale ``staged``
    previous.mkdir()
    moved: list[str] = []
    try:
        for name in names:
            moved.append(name)
            if (directory / name).exists():
                os.replace(directory / name, previous / name)
            os.replace(staged / name, directory / name)
    except BaseException:
        for name in reversed(moved):
            if (directory / name).exists() and not (staged / name).exists():
                os.replace(directory / name, staged / name)
            if (previous / name).exists():
                os.replace(previous / name, directory / name)
        _remove(previous)
        raise
    _remove(staged)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to the file ``path`` (parents created) through a temporary sibling and one rename, so ``path``
    holds the old text or the new, never a part; returns ``path``. A folder at ``path`` is an error naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path (e.g. {path / 'results.json'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path.parent, path.name)
    staged = sibling(path)
    try:
        staged.write_text(text)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def staged_into(directory: str | Path, last: str) -> Iterator[Path]:
    """Yield a fresh temporary folder inside ``directory`` (created if needed); when the block ends without an error
    its entries are moved into ``directory`` by :func:`merge_staged` (``last`` last), else it is removed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(directory, "final")
    staged = sibling(directory / "final")
    _remove(staged)
    staged.mkdir()
    try:
        yield staged
        merge_staged(staged, directory, last)
    finally:
        _remove(staged)
