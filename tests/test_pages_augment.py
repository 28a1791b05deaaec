"""The Augmentation Lab page: preview with labelled metrics, cached scores, live thresholds, policy saving."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

import mai_core.augment as A  # noqa: E402
from mai_core.augment import scoring  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "3_Augmentation_Lab.py")


def _kept_table(at):
    for df in at.dataframe:
        value = df.value
        if "kept" in getattr(value, "columns", []):
            return value
    raise AssertionError("no kept/rejected table on the page")


def _wait_for_scores(at, timeout=120.0):
    """Scoring runs in the background with a progress bar: wait for it, then redraw the page."""
    import time

    from mai_core.app import tasks

    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [t for k, t in list(tasks._TASKS.items()) if k.startswith("augscore:") and t.running]
        if not running:
            break
        time.sleep(0.2)
    at.run()


def test_thresholds_mark_kept_live_without_rescoring_and_policy_saves(demo_dir, workspace, tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no LPIPS weights -> labelled substitute
    monkeypatch.setattr(scoring, "dino_weights_path", lambda: None)
    calls = []
    real = A.score_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "score_dataset", counting)
    st.cache_data.clear()
    st.cache_resource.clear()

    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    # preview grid with numbers, metric labels and the fallback warning
    assert len(at.multiselect(key="aug_images").value) == 2
    assert any("lpips-style/efficientnet_lite0" in c.value for c in at.caption)
    assert any("Stand-in metric" in w.value for w in at.warning)

    at.number_input(key="score_n").set_value(3)
    at.number_input(key="score_k").set_value(1)
    at.multiselect(key="score_augs").set_value(["Identity", "HorizontalFlip", "HEDJitter", "GaussianBlur"])
    at.button(key="score_submit").click()
    at.run()
    _wait_for_scores(at)
    assert not at.exception, at.exception
    assert len(calls) == 1
    before = _kept_table(at)
    assert list(before["aug"]) == ["Identity", "HorizontalFlip", "HEDJitter", "GaussianBlur"]
    # the sliders start at the default thresholds for the metric in use
    limits = A.default_thresholds(A.LPIPS_FALLBACK, A.DINO_FALLBACK)
    assert at.slider(key="max_lpips").value == pytest.approx(limits["max_lpips"])
    assert at.slider(key="max_hue").value == pytest.approx(limits["max_hue"])
    assert list(before["kept"]) == list(A.kept_mask(before, **limits))
    # at the sliders' maxima everything but Identity is kept
    for key in ("max_lpips", "max_dino", "max_hue"):
        at.slider(key=key).set_value(at.slider(key=key).max)
    at.run()
    assert not at.exception, at.exception
    before = _kept_table(at)
    assert before["kept"].sum() == 3

    # lower the LPIPS threshold just below the second-smallest non-zero mean: the kept set shrinks
    scored = before.set_index("aug")["lpips_mean"].drop("Identity").sort_values()
    limit = float(scored.iloc[0] + scored.iloc[1]) / 2
    at.slider(key="max_lpips").set_value(limit)
    at.run()
    assert not at.exception, at.exception
    after = _kept_table(at)
    assert list(after[after["kept"]]["aug"]) == [scored.index[0]]
    assert len(calls) == 1, "moving a threshold slider must not recompute the scores"

    at.text_input(key="policy_name").set_value("from_lab")
    at.button(key="save_policy").click()
    at.run()
    assert not at.exception, at.exception
    assert any("from_lab" in s.value for s in at.success)
    saved = A.load_policy("from_lab")
    assert [it.aug for it in saved.items] == [scored.index[0]]
    listed = [df.value for df in at.dataframe if "source" in getattr(df.value, "columns", [])]
    assert listed and "from_lab" in set(listed[0]["name"])


def test_preview_distances_are_measured_in_the_background_once(demo_dir, workspace, tmp_path, monkeypatch):
    """The first render does not wait for the preview's perceptual distances; reruns reuse them."""
    import time

    import streamlit as st

    from mai_core.app import tasks

    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(scoring, "dino_weights_path", lambda: None)
    calls = []
    real = A.preview_pairs

    def slow_counting(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # the render must not wait for this
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "preview_pairs", slow_counting)
    st.cache_data.clear()
    st.cache_resource.clear()
    for key in [k for k in list(tasks._TASKS) if k.startswith("augpreview:")]:
        tasks.forget_task(key)

    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert any("being computed" in c.value for c in at.caption)  # originals shown, distances on their way
    running = [t for k, t in list(tasks._TASKS.items()) if k.startswith("augpreview:")]
    assert len(running) == 1
    deadline = time.time() + 120
    while running[0].running and time.time() < deadline:
        time.sleep(0.2)
    assert running[0].ok, running[0].error
    at.run()
    assert not at.exception, at.exception
    captions = [c for im in at.get("image") for c in im.captions]
    measured = [c for c in captions if " · LPIPS " in c and " · DINO " in c]
    assert len(measured) == 2 * 3, captions  # two images x the three default preview augmentations
    assert not any("being computed" in c.value for c in at.caption)
    assert len(calls) == 3  # one measurement per augmentation
    at.run()  # a rerun reuses the measured preview
    assert len(calls) == 3
