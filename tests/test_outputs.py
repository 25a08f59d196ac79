"""st_instruct.outputs: staged writes, refusal to overwrite, replacement only once complete, stale-sibling cleanup."""

import subprocess
import sys
from pathlib import Path

import pytest

from st_instruct import outputs
from st_instruct.outputs import (
    OutputExistsError,
    clean_stale_siblings,
    merge_staged,
    staged_output,
    write_text_atomic,
)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def siblings(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_staged_folder_appears_complete_in_one_move(tmp_path):
    final = tmp_path / "out"
    with staged_output(final) as staging:
        (staging / "a.txt").write_text("a")
        assert not final.exists() and staging.parent == tmp_path and staging.name.startswith(".out.partial-")
    assert (final / "a.txt").read_text() == "a" and siblings(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_an_error_or_ctrl_c_leaves_nothing_and_the_old_folder_untouched(error, tmp_path):
    with pytest.raises(type(error)), staged_output(tmp_path / "new") as staging:
        (staging / "half").write_text("x")
        raise error
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("old")
    with pytest.raises(type(error)), staged_output(tmp_path / "old", overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
        raise error
    assert (tmp_path / "old" / "keep.txt").read_text() == "old" and siblings(tmp_path) == []


def test_a_nonempty_folder_is_refused_naming_it_and_the_flag_an_empty_one_is_used(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match=r"full already exists and is not empty \(holds x\).*--force"):
        with staged_output(tmp_path / "full", flag="--force", what="holds x"):
            pytest.fail("the block must not run")
    assert (tmp_path / "full" / "x").read_text() == "x" and siblings(tmp_path) == []
    (tmp_path / "empty").mkdir()
    with staged_output(tmp_path / "empty") as staging:
        (staging / "y").write_text("y")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["y"]


def test_overwrite_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_output(final, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"
    assert [p.name for p in final.iterdir()] == ["new.txt"] and siblings(tmp_path) == []


def test_keep_discards_the_new_copy_when_a_complete_one_appeared_and_replaces_a_broken_one(tmp_path):
    complete = lambda path: (path / "done").is_file()  # noqa: E731
    final = tmp_path / "cache"
    with staged_output(final, keep=complete) as staging:
        (staging / "done").write_text("mine")
        final.mkdir()
        (final / "done").write_text("theirs")  # another process finished first
    assert (final / "done").read_text() == "theirs" and siblings(tmp_path) == []
    (final / "done").unlink()
    (final / "junk").write_text("broken leftover")
    with staged_output(final, keep=complete) as staging:
        (staging / "done").write_text("mine")
    assert sorted(p.name for p in final.iterdir()) == ["done"] and (final / "done").read_text() == "mine"


def test_keep_holds_when_another_process_finishes_between_the_check_and_the_rename(tmp_path, monkeypatch):
    """Two ranks building one cache entry: the other rank's complete folder lands after ``commit`` saw no folder and
    before its rename, which then fails (ENOTEMPTY); the complete copy is kept and this one discarded, no error."""
    complete = lambda path: (path / "done").is_file()  # noqa: E731
    final, rename = tmp_path / "cache", outputs.os.replace

    def other_rank_first(source, destination):
        if Path(destination) == final and not final.exists():
            final.mkdir()
            (final / "done").write_text("theirs")
        return rename(source, destination)

    monkeypatch.setattr(outputs.os, "replace", other_rank_first)
    with staged_output(final, keep=complete) as staging:
        (staging / "done").write_text("mine")
    assert (final / "done").read_text() == "theirs" and siblings(tmp_path) == []


def test_stale_siblings_of_dead_processes_are_cleaned_live_and_foreign_ones_left(tmp_path):
    host = outputs._HOST
    dead, live = dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f".out.partial-{host}-{dead}", f".out.partial-{host}-{live.pid}",
                     f".out.partial-elsewhere-{dead}", f"fp.partial-{dead}", f".other.partial-{host}-{dead}"):
            (tmp_path / name).mkdir()
        (tmp_path / f".gone.replaced-{host}-{dead}").mkdir()  # died between the two renames of a replacement
        (tmp_path / f".gone.replaced-{host}-{dead}" / "model").write_text("previous")
        cleaned = clean_stale_siblings(tmp_path, "out")
        assert [p.name for p in cleaned] == [f".out.partial-{host}-{dead}"]
        clean_stale_siblings(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f".out.partial-{host}-{live.pid}", f".out.partial-elsewhere-{dead}", "gone"])
        assert (tmp_path / "gone" / "model").read_text() == "previous"
    finally:
        live.kill()
        live.wait()


def test_merge_moves_the_marker_last_and_rolls_back_on_an_error(tmp_path, monkeypatch):
    directory, staged = tmp_path / "run", tmp_path / "run" / ".final.partial-h-1"
    (directory / "checkpoint-2").mkdir(parents=True)
    (directory / "weights").write_text("old weights")
    staged.mkdir()
    for name in ("marker", "weights", "card"):
        (staged / name).write_text(f"new {name}")
    real_replace, calls = outputs.os.replace, []

    def failing_replace(src, dst):
        calls.append(str(dst))
        if str(dst).endswith("marker"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        merge_staged(staged, directory, last="marker")
    forward = calls[:calls.index(str(directory / "marker")) + 1]  # the moves up to the failure, then the rollback
    assert {str(directory / "card"), str(directory / "weights")} < set(forward[:-1])  # the marker comes last
    assert sorted(p.name for p in directory.iterdir() if p != staged) == ["checkpoint-2", "weights"]
    assert (directory / "weights").read_text() == "old weights"
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    merge_staged(staged, directory, last="marker")
    assert sorted(p.name for p in directory.iterdir()) == ["card", "checkpoint-2", "marker", "weights"]
    assert (directory / "weights").read_text() == "new weights"


def test_text_files_are_replaced_whole_and_a_folder_path_is_refused(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "r.json", "1")
    assert write_text_atomic(path, "2") == path and path.read_text() == "2"
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder; give a file path"):
        write_text_atomic(tmp_path, "3")
