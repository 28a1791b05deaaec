"""Careless and hostile input: no option smuggling, no file disclosure, no destroyed data, clear messages.

Each test names the case it covers: (1) options smuggled through the training form, (3) file contents in
error messages and paths outside the allowed folders, (4) --out targets that are not ours, (5) truncated
images, (6) NUL bytes and absurd paths, (7) empty gene names, (8) values that do not fit float32, then the
smaller items (CSV dialects, failed and damaged runs, full disks, file permissions) and packaging.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import stat
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mai_core.cli import build_parser, main
from mai_core.data.dataset import collect_problems
from mai_core.errors import MaiError

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-HASH-4f9a"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _fake_secret_file(path: Path, text: str | None = None) -> Path:
    path.write_text(text if text is not None else f"root:{SECRET}:19000:0:99999:7:::\nbin:*:19000::\n")
    return path


@pytest.fixture(scope="module")
def ridge_run(demo_dir, tmp_path_factory):
    """A finished ridge run on the demo (fast: cached EfficientNet-Lite0 features + closed-form ridge)."""
    base = tmp_path_factory.mktemp("ridge")
    old = os.environ.get("MAI_WORKSPACE")
    os.environ["MAI_WORKSPACE"] = str(base / "workspace")
    try:
        out = base / "run"
        assert main(["train", "--data", str(demo_dir), "--out", str(out), "--model", "ridge", "--device", "cpu",
                     "--quiet"]) == 0
    finally:
        if old is None:
            os.environ.pop("MAI_WORKSPACE", None)
        else:
            os.environ["MAI_WORKSPACE"] = old
    return out


# ---------------------------------------------------------------------------------------------- case 1
def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "_name_parser_map") else ():
            yield from _all_parsers(sub)


def test_1_no_parser_expands_abbreviated_options(tmp_path):
    parsers = list(_all_parsers(build_parser()))
    assert len(parsers) > 15  # the top parser, every command and the jobs actions
    assert all(p.allow_abbrev is False for p in parsers), [p.prog for p in parsers if p.allow_abbrev]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--ou", str(tmp_path / "victim")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--run", "r", "--csv", "c", "--ou", "x"])


def test_1_training_form_takes_only_allow_listed_options(demo_dir, workspace, tmp_path, capsys):
    from mai_core.runs import jobs

    victim = tmp_path / "victim"
    rc = main(["jobs", "start", "--data", str(demo_dir), "--name", "j1", "--device", "cpu", "--",
               "--model", "ridge", "--ou", str(victim)])
    assert rc == 2
    assert "--ou is not accepted here" in capsys.readouterr().err
    assert not victim.exists() and not (workspace / "jobs" / "j1.json").exists()
    smuggled = [["--out", "x"], ["--out=x"], ["--data", "/"], ["--device", "cuda"], ["--resume"],
                ["--config", "/etc/passwd"], ["--grouping", "/etc/passwd"], ["--weights", "/tmp/w.pt"],
                ["--aug-policy", "../../x.yaml"], ["--aug-policy", "evil.yaml"], ["--o", "x"], ["stray"],
                ["--lr", "1e300"], ["--lr", "nan"], ["--epochs", "0"], ["--tta", "maybe"], ["--compile=yes"],
                ["--lr"], ["--lr", "--out"]]
    for extra in smuggled:
        spec = jobs.TrainSpec(data=str(demo_dir), device="cpu", extra=extra)
        with pytest.raises(MaiError):
            spec.validate()
    fine = jobs.TrainSpec(data=str(demo_dir), device="cpu", extra=["--lr", "3e-4", "--image-size", "160", "--tta",
                                                                    "off", "--compile", "--train-blocks", "-1",
                                                                    "--val-sections=C2,C3", "--seed", "7"])
    fine.validate()


def test_1_allow_list_names_real_train_options():
    from mai_core.runs.jobs import EXTRA_TRAIN_OPTIONS

    train = next(p for p in _all_parsers(build_parser()) if p.prog.endswith(" train"))
    known = {s: a for a in train._actions for s in a.option_strings}
    for name, check in EXTRA_TRAIN_OPTIONS.items():
        assert name in known, name
        action = known[name]
        assert (check is None) == (action.nargs == 0), name  # switches take no value
        for choice in action.choices or ():
            assert check(str(choice)) is None, (name, choice)
    for reserved in ("--data", "--out", "--device", "--resume", "--config", "--grouping"):
        assert reserved not in EXTRA_TRAIN_OPTIONS


# ---------------------------------------------------------------------------------------------- case 3
def test_3_errors_name_files_never_their_content(demo_dir, tmp_path, capsys):
    from mai_core.augment.policy import load_policy
    from mai_core.genes.grouping import load_grouping
    from mai_core.training.config import read_config_file

    shadow = _fake_secret_file(tmp_path / "shadow")
    assert main(["predict", "--run", str(tmp_path), "--csv", str(shadow), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert str(shadow) in err and SECRET not in err
    for make in (lambda: load_grouping(shadow),
                 lambda: read_config_file(_fake_secret_file(tmp_path / "c1.yaml", f"model: {SECRET}\n  bad: [\n")),
                 lambda: read_config_file(_fake_secret_file(tmp_path / "c2.yaml", f"{SECRET}: 1\n")),
                 lambda: load_policy(str(_fake_secret_file(tmp_path / "p.yaml", f"name: x\nitems: [{SECRET}]\n"))),
                 lambda: load_policy(str(_fake_secret_file(tmp_path / "q.yaml", f"{SECRET}: [\n")))):
        with pytest.raises(MaiError) as info:
            make()
        assert SECRET not in info.value.render()
    assert main(["train", "--data", str(demo_dir), "--out", str(tmp_path / "o"),
                 "--config", str(tmp_path / "c2.yaml")]) == 2
    assert SECRET not in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_3_app_paths_resolve_inside_allowed_roots(demo_dir, workspace, tmp_path, monkeypatch):
    from mai_core.app.frame import allowed_roots, resolve_typed_path
    from mai_core.data.dataset import load_dataset

    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.delenv("MAI_DATA_ROOTS", raising=False)
    ds = load_dataset(demo_dir, check_images=False)
    assert resolve_typed_path(str(demo_dir / "test.csv"), "CSV", ds) == (demo_dir / "test.csv").resolve()
    assert resolve_typed_path("test.csv", "CSV", ds) == (demo_dir / "test.csv").resolve()  # relative: the dataset
    (workspace / "sets.gmt").write_text("A\tx\tG1\n")
    assert resolve_typed_path(str(workspace / "sets.gmt"), "GMT file") == (workspace / "sets.gmt").resolve()
    outside = _fake_secret_file(tmp_path / "elsewhere.csv")
    link = workspace / "link_out.csv"  # inside an allowed folder, pointing out of it
    link.symlink_to(outside)
    for text in ("/etc/passwd", str(outside), str(link), str(workspace / ".." / "elsewhere.csv"),
                 "../../../etc/passwd", "/tmp/a\x00b", "/tmp/" + "a" * 5000):
        with pytest.raises(MaiError) as info:
            resolve_typed_path(text, "CSV", ds)
        assert SECRET not in info.value.render()
    monkeypatch.setenv("MAI_DATA_ROOTS", os.pathsep.join([str(tmp_path), "/nonexistent-root"]))
    assert tmp_path.resolve() in allowed_roots()
    assert resolve_typed_path(str(outside), "CSV", ds) == outside.resolve()


def test_3_ensemble_names_cannot_leave_the_runs_folder(workspace):
    from mai_core.runs.ensemble import ensemble_path

    assert ensemble_path("ens-1") == workspace / "runs" / "ens-1"
    for bad in ("../x", "../../etc", "a/b", "..", ".", "", " ", "x" * 100, "/abs"):
        with pytest.raises(MaiError):
            ensemble_path(bad)


def test_3_grouping_and_policy_names_cannot_leave_their_folders(workspace):
    from mai_core.augment.policy import Policy, save_policy
    from mai_core.genes.grouping import Grouping
    from mai_core.genes.overview import save_grouping

    g = Grouping(["A", "B"], ["0", "1"], "custom")
    for bad in ("../evil", "a/b", "..", ""):
        with pytest.raises(MaiError):
            save_grouping(g, bad)
        with pytest.raises(MaiError):
            save_policy(Policy(bad, [("HorizontalFlip", {}, 0.5)]))
    assert not list(workspace.parent.glob("evil*")) and not list(workspace.glob("evil*"))
    assert save_policy(Policy("fine", [("HorizontalFlip", {}, 0.5)])).parent == workspace / "policies"


# ---------------------------------------------------------------------------------------------- case 4
def test_4_predict_and_evaluate_never_overwrite_foreign_files(ridge_run, demo_dir, tmp_path, capsys):
    data = _copy(demo_dir, tmp_path / "data")
    train_before = (data / "train.csv").read_bytes()
    assert main(["predict", "--run", str(ridge_run), "--csv", str(data / "test.csv"), "--out",
                 str(data / "train.csv"), "--quiet", "--device", "cpu"]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert (data / "train.csv").read_bytes() == train_before
    sub = tmp_path / "sub.csv"
    for _ in range(2):  # a new file, then our own earlier prediction: both without --force
        assert main(["predict", "--run", str(ridge_run), "--csv", str(data / "test.csv"), "--out", str(sub),
                     "--quiet", "--device", "cpu"]) == 0
    sub.write_text(sub.read_text() + "edited by hand\n")  # no longer what we wrote: protected again
    assert main(["predict", "--run", str(ridge_run), "--csv", str(data / "test.csv"), "--out", str(sub),
                 "--quiet", "--device", "cpu"]) == 2
    config_before = (ridge_run / "config.yaml").read_bytes()
    assert main(["evaluate", "--run", str(ridge_run), "--split", "val", "--out",
                 str(ridge_run / "config.yaml")]) == 2
    assert (ridge_run / "config.yaml").read_bytes() == config_before
    metrics = tmp_path / "m.json"
    for _ in range(2):
        assert main(["evaluate", "--run", str(ridge_run), "--split", "val", "--out", str(metrics)]) == 0
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    assert main(["evaluate", "--run", str(ridge_run), "--split", "val", "--out", str(notes)]) == 2
    assert main(["evaluate", "--run", str(ridge_run), "--split", "val", "--out", str(notes), "--force"]) == 0
    assert "gene_pcc" in json.loads(notes.read_text()) or len(json.loads(notes.read_text())) > 3


def test_4_train_refuses_folders_that_hold_something_else(ridge_run, demo_dir, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: 1\n")
    (project / "main.py").write_text("print('hello')\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "config.yaml").write_text("kind: ensemble\nmembers: []\n")
    (ens / "genes.txt").write_text("A\n")
    for target in (project, afile, ens, ridge_run):
        before = {p.name: p.read_bytes() for p in (target.iterdir() if target.is_dir() else []) if p.is_file()}
        assert main(["train", "--data", str(demo_dir), "--out", str(target), "--model", "ridge", "--quiet",
                     "--device", "cpu"]) == 2, target
        after = {p.name: p.read_bytes() for p in (target.iterdir() if target.is_dir() else []) if p.is_file()}
        assert after == before, target  # nothing written, not even a log or a status
    err = capsys.readouterr().err
    assert "--force" in err and "--resume" in err


def test_4_ensemble_and_gradcam_refuse_foreign_folders_unless_forced(ridge_run, demo_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["ensemble", "--runs", str(ridge_run), str(ridge_run), "--out", str(precious)]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"
    train = pd.read_csv(demo_dir / "train.csv", dtype={"ID": str}, nrows=1)
    assert main(["gradcam", "--run", str(ridge_run), "--data", str(demo_dir), "--ids", train["ID"].iat[0],
                 "--genes", train.columns[2], "--out", str(precious), "--device", "cpu", "--quiet"]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"
    assert main(["ensemble", "--runs", str(ridge_run), str(ridge_run), "--out", str(precious), "--force"]) == 0
    assert not (precious / "notes.txt").exists() and (precious / "config.yaml").is_file()


# ---------------------------------------------------------------------------------------------- case 5
def test_5_truncated_jpeg_fails_validation_naming_file_and_row(demo_dir, tmp_path, capsys):
    from mai_core.data.images import load_image

    data = _copy(demo_dir, tmp_path / "data")
    df = pd.read_csv(data / "train.csv", dtype={"ID": str})
    Image.open(data / df["path"].iat[3]).convert("RGB").save(data / "images" / "cut.jpg", quality=92)
    blob = (data / "images" / "cut.jpg").read_bytes()
    (data / "images" / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    df.loc[3, "path"] = "images/cut.jpg"
    df.to_csv(data / "train.csv", index=False)
    assert main(["validate", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "train.csv row 5" in err and "cut.jpg" in err
    with pytest.raises(MaiError, match="cut.jpg"):
        load_image(data / "images" / "cut.jpg")


# ---------------------------------------------------------------------------------------------- case 6
def test_6_nul_bytes_and_huge_paths_are_problems_not_crashes(demo_dir, tmp_path, capsys):
    data = _copy(demo_dir, tmp_path / "data")
    df = pd.read_csv(data / "train.csv", dtype={"ID": str})
    df.loc[2, "path"] = "images/" + "a" * 5000 + ".png"
    df.loc[5, "path"] = "images/" + "b" * 300 + ".png"
    df.loc[7, "path"] = "images/missing.png"
    df.to_csv(data / "train.csv", index=False)
    problems, _, _ = collect_problems(data)
    where = " | ".join(f"{p.where}: {p.what}" for p in problems)
    assert "row 4" in where and "row 7" in where and "row 9" in where  # every row reported, none stops the rest
    assert max(len(str(p)) for p in problems) < 600
    assert main(["validate", "--data", "/tmp/" + "c" * 5000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 1000 and "Traceback" not in err
    from mai_core.io import check_path_text

    assert check_path_text("/data/x\x00y", "dataset folder")
    assert not check_path_text("/data/ok", "dataset folder")


# ---------------------------------------------------------------------------------------------- case 7 and 8
def test_7_empty_or_unprintable_gene_names_are_refused(demo_dir, tmp_path, capsys):
    data = _copy(demo_dir, tmp_path / "data")
    lines = (data / "train.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    header[5], header[6] = "", "   "
    lines[0] = ",".join(header) + "\n"
    (data / "train.csv").write_text("".join(lines))
    assert main(["validate", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "column 6: has no name" in err and "column 7: has no name" in err


def test_8_values_beyond_float32_are_refused(demo_dir, tmp_path, capsys):
    data = _copy(demo_dir, tmp_path / "data")
    df = pd.read_csv(data / "train.csv", dtype={"ID": str})
    gene = df.columns[5]
    df[gene] = df[gene].astype(float)
    df.loc[4, gene] = 1e300
    df.loc[6, gene] = -1e39
    df.to_csv(data / "train.csv", index=False)
    assert main(["validate", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"row 6, column '{gene}'" in err and f"row 8, column '{gene}'" in err and "32-bit" in err


# ---------------------------------------------------------------------------------------------- low items
def test_bom_is_accepted_and_semicolons_are_named(demo_dir, tmp_path, capsys):
    data = _copy(demo_dir, tmp_path / "data")
    raw = (data / "train.csv").read_bytes()
    (data / "train.csv").write_bytes(b"\xef\xbb\xbf" + raw)
    problems, train, _ = collect_problems(data, check_images=False)
    assert problems == [] and list(train.columns[:2]) == ["ID", "path"]
    (data / "train.csv").write_text(raw.decode().replace(",", ";"))
    assert main(["validate", "--data", str(data)]) == 2
    assert "semicolon-separated" in capsys.readouterr().err


def test_failed_attempt_does_not_block_its_folder_or_name(demo_dir, workspace):
    from mai_core.runs import jobs
    from mai_core.runs.jobstore import write_record
    from mai_core.training.recorder import Recorder

    run = workspace / "runs" / "again"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": "bad option"}))
    (run / "log.txt").write_text("error: bad option\n")
    Recorder(run).check_target(resume=False)  # a failed start holds nothing to lose
    write_record({"id": "again", "run_dir": str(run), "device": "cpu", "argv": ["x"], "state": "done",
                  "queued_at": 1.0, "returncode": 2, "pid": None})
    info = jobs.submit(jobs.TrainSpec(data=str(demo_dir), name="again", device="cpu"), spawn=False)
    assert info.id == "again" and info.state == "queued"


def test_refused_start_leaves_no_trace_in_the_folder(tmp_path):
    from mai_core.training.recorder import Recorder

    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    rec = Recorder(project)
    with pytest.raises(MaiError):
        rec.check_target(resume=False)
    rec.fail("refused", None)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]


def test_damaged_resume_state_is_our_message_and_keeps_the_status(ridge_run, tmp_path, capsys):
    run = _copy(ridge_run, tmp_path / "run")
    (run / "checkpoints" / "last_state.pt").write_bytes(b"not a checkpoint")
    status_before = json.loads((run / "status.json").read_text())
    assert status_before["state"] == "finished"
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "weights_only" not in err and "Traceback" not in err
    assert json.loads((run / "status.json").read_text()) == status_before


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    from mai_core import io

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(OSError) as info:
        io.write_json(target, {"a": 1})
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert not target.exists() and [p for p in target.parent.iterdir()] == []


def test_outputs_follow_the_umask(tmp_path):
    from mai_core import io

    old = os.umask(0o022)
    try:
        io._UMASK = 0o022
        io.write_text(tmp_path / "a.txt", "x")
        with io.atomic_dir(tmp_path / "d", lambda p: True, "output") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
        io._UMASK = io._read_umask()
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


# ---------------------------------------------------------------------------------------------- packaging
def _requirements() -> list[str]:
    out = []
    for ln in (REPO / "requirements.txt").read_text().splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            out.append(ln)
    return out


def test_pyproject_declares_what_requirements_installs():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [r for r in _requirements() if not r.startswith(("pytest", "playwright"))]
    assert meta["dependencies"] == runtime
    extras = meta["optional-dependencies"]
    assert any(r.startswith("pytest") for r in extras["test"])
    assert any(r.startswith("playwright") for r in extras["browser"])
    assert meta["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")


def test_every_imported_package_is_declared():
    from importlib.metadata import packages_distributions

    def name(req: str) -> str:
        for sep in "<>=!~;[ ":
            req = req.split(sep, 1)[0]
        return req.lower().replace("_", "-")

    declared = {name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for path in (REPO / "mai_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for mod in mods:
                top = mod.split(".")[0]
                if top in stdlib or top in ("mai_core", "__future__"):
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not owners & declared:
                    missing.setdefault(top, str(path.relative_to(REPO)))
    assert not missing, f"imported but not declared in pyproject.toml/requirements.txt: {missing}"


def test_no_posix_only_module_at_import_time():
    for path in list((REPO / "mai_core").rglob("*.py")) + list((REPO / "pages").glob("*.py")) + [REPO / "app.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("fcntl", "termios", "pwd", "grp") for n in names), path


def test_process_liveness_works_through_psutil():
    from mai_core.procs import process_alive, process_start_time

    me = os.getpid()
    start = process_start_time(me)
    assert isinstance(start, int) and process_alive(me, start) and not process_alive(me, start + 1)
    assert not process_alive(2 ** 22 + 12345) and process_start_time("nope") is None
    assert np.isfinite(start)
