"""The home page (app.py): dataset counts, gallery, gene table, validation problems, navigation."""

from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


def _app(monkeypatch, data, workspace):
    monkeypatch.setenv("MAI_DATA", str(data))
    monkeypatch.setenv("MAI_WORKSPACE", str(workspace))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_home_shows_counts_gallery_and_genes(monkeypatch, demo_dir, workspace):
    at = _app(monkeypatch, demo_dir, workspace)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training patches"] == "120"
    assert metrics["Test patches"] == "40"
    assert metrics["Genes"] == "60"
    assert metrics["Problems"] == "0"
    assert len(at.dataframe) >= 1
    # Filtering the gallery by ID narrows it to the matching images.
    at.text_input(key="home_id_filter").input("train_0000").run()
    assert not at.exception
    assert "Page (of 1)" in [n.label for n in at.number_input]


def test_home_lists_validation_problems_readably(monkeypatch, demo_dir, workspace, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_dir, bad)
    df = pd.read_csv(bad / "train.csv")
    df.loc[3, df.columns[2]] = float("nan")
    df.to_csv(bad / "train.csv", index=False)
    at = _app(monkeypatch, bad, workspace)
    text = " ".join(e.value for e in at.error)
    assert "problem" in text
    problems = at.dataframe[0].value
    assert "missing/NaN" in " ".join(problems["problem"].astype(str))
    assert "row 5" in " ".join(problems["where"].astype(str))


def test_page_run_times_go_to_the_console_only_when_asked(monkeypatch, demo_dir, workspace, capfd):
    from mai_core.app.frame import TIMING_ENV, TIMING_MARK

    monkeypatch.setenv(TIMING_ENV, "1")
    at = _app(monkeypatch, demo_dir, workspace)
    err = capfd.readouterr().err
    assert f"{TIMING_MARK} 'Home' ran in " in err, err[-2000:]
    monkeypatch.setenv(TIMING_ENV, "0")
    at.run()
    assert TIMING_MARK not in capfd.readouterr().err


def test_the_gene_scales_chart_is_drawn_only_once_its_section_is_opened(monkeypatch, demo_dir, workspace):
    """The first screen needs no chart library (a first render 1 to 2 s faster in a cold browser,
    bench/pages.py); the histogram is one click away."""
    at = _app(monkeypatch, demo_dir, workspace)
    assert len(at.get("plotly_chart")) == 0
    assert "Gene scales: histogram of mean expression" in [e.label for e in at.expander]
    at.session_state["home_scales_open"] = True  # the user opens the section
    at.run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1
