"""Atomic outputs never replace a user's unrelated folder or file, and leave nothing half-written."""

import pytest

from mai_core.cli import main
from mai_core.errors import MaiError
from mai_core.io import atomic_dir, write_text


def test_atomic_dir_refuses_unrelated_folders_and_files(tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    write_text(precious / "train.csv", "ID,path\n")
    with pytest.raises(MaiError, match="refusing to replace"):
        with atomic_dir(precious, lambda p: (p / "index.csv").is_file(), "Grad-CAM output"):
            pass
    assert (precious / "train.csv").read_text() == "ID,path\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(MaiError, match="it is a file"):
        with atomic_dir(afile, lambda p: True, "output"):
            pass
    assert afile.read_text() == "x"


def test_atomic_dir_replaces_its_own_kind_and_cleans_up_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, lambda p: (p / "index.csv").is_file(), "output") as tmp:
        (tmp / "index.csv").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, lambda p: (p / "index.csv").is_file(), "output") as tmp:
            (tmp / "index.csv").write_text("v2")
            raise RuntimeError("interrupted")
    assert (out / "index.csv").read_text() == "v1"  # the failed write left the old output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and no temporary folder behind
    with atomic_dir(out, lambda p: (p / "index.csv").is_file(), "output") as tmp:
        (tmp / "index.csv").write_text("v3")
    assert (out / "index.csv").read_text() == "v3"


def test_os_errors_are_messages_not_tracebacks(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile / "sub"), "--n-train", "2", "--n-test", "1", "--n-genes", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
