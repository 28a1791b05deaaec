"""Shared fixtures: a small generated demo dataset and an isolated workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Pages run in this process (AppTest) must not start the app's background imports: a thread importing
# libraries while other tests run would race with `warnings.catch_warnings` (process-wide state) and hide
# the warnings those tests expect. Servers started by the browser tests turn it back on where they need it.
os.environ["MAI_APP_WARM"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer-running test (trains a model or starts a server)")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset (deterministic), generated once per test session."""
    from mai_core.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(out, n_train=120, n_test=40, n_genes=60, seed=0)
    return out


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace folder used by everything that writes runs, groupings, caches."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    monkeypatch.setenv("MAI_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    d = SHARED_DATA / "her2st"
    if not (d / "C5.jpg").exists():
        pytest.skip(f"HER2ST sections not found at {d}")
    return d


@pytest.fixture(scope="session")
def hallmark_gmt() -> Path:
    p = SHARED_DATA / "genesets" / "h.all.v7.0.symbols.gmt"
    if not p.exists():
        pytest.skip(f"Hallmark GMT not found at {p}")
    return p
