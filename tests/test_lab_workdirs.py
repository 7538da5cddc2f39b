"""The lab's temporary folders are named after the lab, so `lab down` removes what a
killed `lab demo` or runner left behind, and nothing of other labs or other users."""

from __future__ import annotations

import os
import tempfile

import pytest

from stunturn_diag.lab import state


@pytest.fixture
def tmpdir_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_workdirs_of_one_lab_are_removed_and_others_stay(tmpdir_root):
    mine = [state.new_workdir("stl-aaaaaa", what) for what in ("turn", "portmap", "demo")]
    other = state.new_workdir("stl-aaaaab", "turn")
    longer = state.new_workdir("stl-aaaaaa0", "turn")     # a name that only starts alike
    (mine[0] / "turnserver.conf").write_text("x")
    assert all(p.is_dir() and p.name.startswith("stl-aaaaaa-") for p in mine)
    assert oct(mine[0].stat().st_mode & 0o777) == "0o700"
    gone = state.forget_workdirs("stl-aaaaaa")
    assert sorted(gone) == sorted(mine)
    assert not any(p.exists() for p in mine)
    assert other.is_dir() and longer.is_dir()


@pytest.mark.parametrize("name", ["", "stl-", "other-aaaaaa", "/tmp"])
def test_only_lab_names_are_swept(tmpdir_root, name):
    keep = tmpdir_root / "stl-aaaaaa-turn-x"
    keep.mkdir()
    assert state.forget_workdirs(name) == []
    assert keep.is_dir()


def test_glob_characters_in_a_name_match_only_themselves(tmpdir_root):
    keep = tmpdir_root / "stl-ab-turn-x"
    keep.mkdir()
    assert state.forget_workdirs("stl-a?") == [] and state.forget_workdirs("stl-[a]b") == []
    assert keep.is_dir()


def test_a_symlink_or_a_file_is_never_followed(tmpdir_root):
    target = tmpdir_root / "precious"
    target.mkdir()
    (target / "data").write_text("keep")
    os.symlink(target, tmpdir_root / "stl-cccccc-turn-link")
    (tmpdir_root / "stl-cccccc-file").write_text("keep")
    assert state.forget_workdirs("stl-cccccc") == []
    assert (target / "data").read_text() == "keep"
    assert (tmpdir_root / "stl-cccccc-file").exists()
