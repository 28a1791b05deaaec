"""The GPU benchmark suite works before a GPU is at hand: its dry run executes every step on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "bench" / "gpu_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_reports_speedup_and_fraction_of_peak():
    suite = _suite()
    row = {"model": "m", "params_m": 200.0, "fwd_gflops": 70.0, "naive": {"imgs_per_s": 100.0},
           "recipe": {"imgs_per_s": 300.0}, "compiled": {"imgs_per_s": 400.0, "compile_s": 80.0}}
    text = suite.table([row, {"model": "n", "params_m": 3.0, "fwd_gflops": 0.8, "naive": None, "recipe": None,
                              "compile_error": "boom"}], peak=800.0)
    lines = text.splitlines()
    assert lines[0].startswith("| backbone |") and len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[3:] == ["100", "300", "400", "80", "4.00x", "10.5 %"]  # 3 x 70 GFLOP x 400 / 800 TFLOP/s
    assert "failed: boom" in lines[3] and "—" in lines[3]


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = proc.stdout
    # the real backbones' names resolve and their FLOPs are counted (known: ConvNeXt-V2-L 34.4 GMACs at 224 px)
    for name in ("convnextv2_large.fcmae_ft_in22k_in1k", "coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k",
                 "xcit_large_24_p16_224.fb_in1k", "efficientnet_lite0"):
        assert name in text
    res = json.loads(out.read_text())
    assert res["failed"] == []
    (row,) = res["rows"]
    assert row["model"] == "test_efficientnet"
    assert row["naive"]["imgs_per_s"] > 0 and row["recipe"]["imgs_per_s"] > 0 and row["compiled"]["imgs_per_s"] > 0
    recipe = row["recipe"]
    assert recipe["amp"] and recipe["channels_last"] and recipe["fused"] and recipe["aug"] == "he_safe"
    assert row["compiled"]["compile_s"] > 0
    assert res["smoke"]["ok"] and res["smoke"]["state"] == "finished"
    assert res["slide"]["ok"] and res["slide"]["tiles_per_s_1view"] > 0
    # slide inference is predict_slide end to end over a pyramidal TIFF, not a stream of in-memory tiles
    assert "predict_slide" in res["slide"]["entry_point"] and res["slide"]["tiles"] > 0
    assert res["slide"]["overall_tiles_per_s_1view"] > 0 and "pyramidal TIFF" in text
    assert "| test_efficientnet |" in text and "torchrun smoke: ok" in text
    assert "68.7 GFLOPs" in text
