"""Images that decoded fine are not decoded again until they change (mai_core.data.checked)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from PIL import Image

from mai_core.data import checked, dataset
from mai_core.data.dataset import collect_problems, load_dataset


@pytest.fixture()
def data(demo_dir, tmp_path, workspace):
    out = tmp_path / "data"
    shutil.copytree(demo_dir, out)
    return out


@pytest.fixture()
def opens(monkeypatch):
    """Count the images the validation opens."""
    seen: list[str] = []
    real = dataset.Image.open

    def counting(path, *a, **k):
        seen.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(dataset.Image, "open", counting)
    return seen


def _forget_process_memory(monkeypatch):
    monkeypatch.setattr(checked, "_GOOD", {})
    monkeypatch.setattr(checked, "_LOADED", set())
    monkeypatch.setattr(checked, "_DIRTY", set())


def test_a_validated_dataset_is_not_decoded_again_in_this_or_a_later_process(data, opens, monkeypatch):
    n_images = 160  # 120 train + 40 test
    assert collect_problems(data)[0] == []
    assert len(opens) == 2 * n_images  # verify, then a full decode, of each image
    opens.clear()
    load_dataset(data)
    assert opens == []
    _forget_process_memory(monkeypatch)  # a new process: the record in the workspace cache is read
    load_dataset(data)
    assert opens == []


def test_a_changed_image_is_decoded_again_and_a_bad_one_never_remembered(data, opens, monkeypatch):
    assert collect_problems(data)[0] == []
    df = pd.read_csv(data / "train.csv", dtype={"ID": str})
    target = data / df["path"].iat[4]
    blob = target.read_bytes()
    target.write_bytes(blob[: len(blob) // 2])  # truncated after it was found good
    opens.clear()
    problems = collect_problems(data)[0]
    assert len(problems) == 1 and "row 6" in problems[0].where and "unreadable" in problems[0].what
    assert opens == [str(target.resolve())]  # only the changed file was opened
    _forget_process_memory(monkeypatch)
    assert len(collect_problems(data)[0]) == 1  # still reported, from a fresh process too
    Image.new("RGB", (224, 224), (200, 120, 160)).save(target)
    assert collect_problems(data)[0] == []


def test_the_cache_is_only_an_optimisation(data, opens, monkeypatch, workspace):
    monkeypatch.setattr(checked, "_record_path", lambda folder: workspace / "no" / "such" / "\0bad.json")
    _forget_process_memory(monkeypatch)
    assert collect_problems(data)[0] == []  # an unusable cache path changes nothing but speed
    (workspace / "cache").mkdir(exist_ok=True)
    _forget_process_memory(monkeypatch)
    monkeypatch.setattr(checked, "_record_path", lambda folder: workspace / "cache" / "broken.json")
    (workspace / "cache" / "broken.json").write_text("{not json")
    opens.clear()
    assert collect_problems(data)[0] == []
    assert len(opens) == 320  # an unreadable record: everything decoded again
