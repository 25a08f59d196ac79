"""Writing outputs so that nothing is overwritten unasked and a crash leaves nothing half-written at the final path.

Every output of the package (a built dataset, a trained model's final save, an evaluation folder, a results JSON,
the builder's fingerprint cache) is written to a temporary sibling on the same filesystem, named
``.NAME.partial-HOST-PID``, and moved into place with one ``rename`` once complete; on an error or Ctrl-C the
sibling is removed. A replaced folder is first renamed to ``.NAME.replaced-HOST-PID`` and removed after the new one
is in place. Siblings left by killed runs (their PID no longer alive on this host) are cleaned up by the next write
of the same output: a partial one is removed, a replaced one is put back when ``NAME`` is missing (the run died
between the two renames) and removed otherwise. Siblings of other hosts (a shared filesystem) are left alone.

Every output path is checked before any slow work (:func:`check_writable`, :func:`check_output_file`): an existing
output is refused unless the user passed the verb's ``--overwrite``, a file path that is a folder (or a folder path
that is a file, or a path under a file) is refused, and the folder it goes into must accept a new file (probed with
an unnamed temporary file, so a check leaves nothing behind even when killed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
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


def final_path(path: str | Path) -> Path:
    """Where ``path`` will be once every staged folder on its way is committed: ``.NAME.partial-HOST-PID`` becomes
    ``NAME``, and :func:`staged_into`'s ``.final.partial-HOST-PID`` merges into its parent. What a file written
    while staged (a model card) names as its folder."""
    parts: list[str] = []
    for part in Path(path).parts:
        match = _SIBLING.match(part)
        if match is None or match["kind"] != "partial":
            parts.append(part)
        elif match["name"] != "final":
            parts.append(match["name"])
    return Path(*parts)


def is_nonempty(path: str | Path) -> bool:
    """A file, or a folder with anything in it."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_can_create(path: str | Path) -> None:
    """Raise an ``OSError`` naming ``path`` unless it can be written: none of its parents is a file, and the folder
    it goes into (its nearest existing parent: missing ones are created) accepts a new file -- probed by creating an
    unnamed temporary file there, which catches read-only folders and filesystems whatever the user's rights."""
    path = Path(path)
    folder = next(parent for parent in path.absolute().parents if parent.exists() or parent == parent.parent)
    if not folder.is_dir():
        raise NotADirectoryError(f"{path} cannot be written: {folder} is a file, not a folder; choose an output path "
                                 "in a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"{path} cannot be written: the folder {folder} does not accept new files "
                              f"({err.strerror or err}); choose another output path or make it writable") from err


def check_writable(path: str | Path, overwrite: bool, flag: str, what: str = "") -> None:
    """Before writing the folder ``path``: raise :class:`OutputExistsError` (one line naming ``path`` and ``flag``)
    if it is not empty and ``overwrite`` is off (``what`` says what it holds), ``NotADirectoryError`` if it is a
    file, and :func:`check_can_create`'s error if it cannot be written."""
    path = Path(path)
    if path.is_file():
        raise NotADirectoryError(f"{path} is a file; give a folder path for this output (it holds several files)")
    if not overwrite and is_nonempty(path):
        holds = f" ({what})" if what else ""
        raise OutputExistsError(f"{path} already exists and is not empty{holds}; nothing was written. Pass {flag} "
                                "to replace it once the new output is complete, or choose another path")
    check_can_create(path / "output")


def check_output_file(path: str | Path, overwrite: bool, flag: str = "--overwrite") -> Path:
    """Before any slow work: ``path`` can be written as a file -- not a folder, not present unless ``overwrite``
    (:class:`OutputExistsError` naming ``flag``), in a folder that accepts it (:func:`check_can_create`)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path (e.g. {path / 'out'}{path.suffix})")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; nothing was written. Pass {flag} to replace it once the new "
                                "file is complete, or choose another path")
    check_can_create(path)
    return path


def commit(staged: Path, path: Path, overwrite: bool, keep: Callable[[Path], bool] | None = None,
           flag: str = "--overwrite") -> None:
    """Move the complete ``staged`` folder or file to ``path``. An existing ``path``: kept (``staged`` discarded)
    when ``keep(path)`` is true, else replaced when ``overwrite``/``keep`` allow it (renamed aside, then removed),
    else :class:`OutputExistsError`."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty folder holds nothing to lose
    if not path.exists():
        try:
            os.replace(staged, path)
            return
        except OSError as err:  # another process (rank) put its folder there between the check and the rename
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if keep is not None and keep(path):
        _remove(staged)
        return
    if not overwrite and keep is None:
        _remove(staged)
        raise OutputExistsError(f"{path} was written by another process meanwhile; nothing was written. Pass {flag} "
                                "to replace it once the new output is complete, or choose another path")
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


@contextlib.contextmanager
def staged_file(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Iterator[Path]:
    """Yield this process's temporary sibling of the file ``path`` (:func:`check_output_file` first; parents
    created) to write; when the block ends without an error it replaces ``path`` with one rename, so ``path`` holds
    the old content or the new, never a part -- also when the process is killed. On an error the sibling is
    removed; one left by a killed process is removed by the next write of ``path``. A file that appeared at
    ``path`` meanwhile is kept (:class:`OutputExistsError`) unless ``overwrite``."""
    path = check_output_file(path, overwrite, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path.parent, path.name)
    staged = sibling(path)
    _remove(staged)
    try:
        yield staged
        commit(staged, path, overwrite, flag=flag)
    except BaseException:
        _remove(staged)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to the file ``path``, replacing what it holds, through :func:`staged_file`; returns ``path``."""
    with staged_file(path, overwrite=True) as staged:
        staged.write_text(text, encoding="utf-8")
    return Path(path)


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
