"""The fast prediction path: same numbers in any memory layout, TTA views 1..8, progress and cancellation
hooks, overlapped decoding, CPU tuning, ``--tta N`` on the command line, and the ridge fit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mai_core.errors import MaiError
from mai_core.models.fastpath import available_cpus, prefetched, prefers_channels_last, to_float_batch
from mai_core.models.tta import dihedral_view, dihedral_views, parse_views

REPO = Path(__file__).resolve().parents[1]


def _model():
    import timm

    from mai_core.models.model import GeneModel, OriginalUnits

    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    gm = GeneModel(backbone, 5, image_size=32)
    with torch.no_grad():
        for h in gm.heads:
            h.last_linear().weight.normal_(0, 0.5)
    gm.set_target_stats(np.arange(5, dtype=np.float32), np.full(5, 2.0, np.float32))
    return OriginalUnits(gm).eval()


def _predictor(channels_last=None, tta=8, batch_size=4):
    from mai_core.runs import Predictor

    return Predictor(_model(), [f"g{i}" for i in range(5)], {}, torch.device("cpu"), tta_views=tta,
                     batch_size=batch_size, channels_last=channels_last)


def _images(n=10, h=40, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference(images, views):
    """Mean over dihedral views of the model's forward, the plain way (NCHW, one view at a time)."""
    model = _model()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return torch.stack([model(v.contiguous()) for v in dihedral_views(x, views)]).mean(0).numpy()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("views", [1, 3, 8])
def test_predictions_equal_the_plain_forward_in_either_layout(channels_last, views):
    imgs = _images()
    pred = _predictor(channels_last=channels_last)
    assert pred.channels_last is channels_last
    out = pred.predict_images(imgs, tta=views)
    assert out.dtype == np.float32 and out.shape == (10, 5)
    np.testing.assert_allclose(out, _reference(imgs, views), rtol=1e-4, atol=1e-5)
    assert np.ptp(out, axis=0).min() > 1e-3  # the images give different predictions: a real comparison


def test_the_faster_layout_is_chosen_for_convolutional_networks():
    pred = _predictor()
    assert pred.channels_last  # EfficientNet: channels_last measures faster on CPU
    assert next(p for p in pred.model.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    token_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, 16), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    assert not prefers_channels_last(token_model, torch.device("cpu"))


def test_default_views_come_from_the_run_and_can_be_overridden():
    imgs = _images(4)
    pred = _predictor(tta=8)
    np.testing.assert_allclose(pred.predict_images(imgs), _reference(imgs, 8), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.predict_images(imgs, tta=False), _reference(imgs, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.predict_images(imgs, tta="4"), _reference(imgs, 4), rtol=1e-4, atol=1e-5)
    with pytest.raises(MaiError, match="test-time augmentation"):
        pred.predict_images(imgs, tta=9)


def test_non_square_images_and_float_input():
    pred = _predictor()
    imgs = _images(3, 40, 48)
    np.testing.assert_allclose(pred.predict_images(imgs, tta=8), _reference(imgs, 8), rtol=1e-4, atol=1e-5)
    as_float = imgs.astype(np.float32) / 255
    np.testing.assert_allclose(pred.predict_images(as_float, tta=2), pred.predict_images(imgs, tta=2),
                               rtol=1e-5, atol=1e-6)
    assert pred.predict_images(imgs[:0]).shape == (0, 5)


def test_progress_callback_and_cancellation():
    from mai_core.runs import PredictionCancelled

    pred = _predictor(batch_size=4)
    calls = []
    pred.predict_images(_images(10), tta=1, on_progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]

    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        stop.set()  # e.g. the app's Cancel button, pressed while the first batch ran

    with pytest.raises(PredictionCancelled) as err:
        pred.predict_images(_images(10), tta=8, on_progress=progress, should_stop=stop)
    assert seen == [4] and err.value.done == 4 and err.value.total == 10
    assert "cancelled after 4 of 10" in err.value.render()
    with pytest.raises(PredictionCancelled):
        pred.predict_images(_images(3), should_stop=lambda: True)


def test_predict_paths_decodes_ahead_and_reports_absolute_progress(tmp_path):
    from mai_core.runs import PredictionCancelled

    imgs = np.stack([np.asarray(Image.fromarray(a).resize((224, 224))) for a in _images(7)])
    paths = []
    for i, a in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    pred = _predictor(batch_size=2)
    calls = []
    out = pred.predict_paths(paths, batch_size=3, tta=2, on_progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(out, pred.predict_images(imgs, tta=2), rtol=1e-5, atol=1e-6)
    assert [d for d, _ in calls] == [2, 3, 5, 6, 7] and {t for _, t in calls} == {7}
    state = {"n": 0}

    def stop_after_two_checks():
        state["n"] += 1
        return state["n"] > 5

    with pytest.raises(PredictionCancelled) as err:
        pred.predict_paths(paths, batch_size=3, tta=2, should_stop=stop_after_two_checks)
    assert err.value.done == 3 and err.value.total == 7  # the first chunk (3 images) was done


def test_predict_stream_yields_one_array_per_chunk():
    pred = _predictor(batch_size=3)
    imgs = _images(8)
    chunks = (imgs[i:i + 5] for i in range(0, 8, 5))
    seen = []
    parts = list(pred.predict_stream(chunks, tta=2, on_progress=lambda d, t: seen.append((d, t)), total=8))
    assert [len(p) for p in parts] == [5, 3] and seen == [(5, 8), (8, 8)]
    np.testing.assert_allclose(np.concatenate(parts), pred.predict_images(imgs, tta=2), rtol=1e-5, atol=1e-6)


def test_prefetched_keeps_order_and_surfaces_errors():
    assert list(prefetched(lambda x: x * x, range(6))) == [0, 1, 4, 9, 16, 25]

    def bad(x):
        if x == 2:
            raise MaiError("image 2 is unreadable")
        return x

    got = []
    with pytest.raises(MaiError, match="unreadable"):
        for v in prefetched(bad, range(5)):
            got.append(v)
    assert got == [0, 1]

    def source():
        yield 1
        raise ValueError("broken source")

    with pytest.raises(ValueError, match="broken source"):
        list(prefetched(lambda x: x, source()))
    produced = []
    it = prefetched(lambda x: produced.append(x) or x, range(1000))
    assert next(it) == 0
    it.close()  # stops the worker: it does not go on decoding the rest
    assert len(produced) < 10


def test_uint8_batch_is_channels_last_without_a_copy():
    imgs = _images(2, 8, 8)
    x = to_float_batch(imgs, torch.device("cpu"), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), imgs / 255.0, rtol=1e-6)
    buf = torch.empty(4, 3, 8, 8)
    y = to_float_batch(imgs, torch.device("cpu"), channels_last=False, out=buf)
    assert y.data_ptr() == buf.data_ptr() and torch.equal(x, y)
    v = dihedral_view(torch.from_numpy(imgs).permute(0, 3, 1, 2), 5)
    assert torch.equal(v, dihedral_views(torch.from_numpy(imgs).permute(0, 3, 1, 2))[5])


def test_parse_views():
    assert [parse_views(v) for v in (None, False, True, "on", "off", "1", 4, " 8 ")] == [1, 1, 8, 8, 1, 1, 4, 8]
    for bad in ("0", "9", "all", -1):
        with pytest.raises(ValueError, match="1..8|on, off"):
            parse_views(bad)


def test_cpu_tuning_is_applied_once_and_can_be_refused():
    code = ("import json; from mai_core.models.fastpath import tune_cpu; import torch; "
            "print(json.dumps(tune_cpu()))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}
    tuned = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                      env=env, check=True).stdout)
    system = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                       env={**env, "MAI_CPU_ALLOCATOR": "system"}, check=True).stdout)
    import platform

    assert tuned["allocator"] is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert system["allocator"] is False
    assert 1 <= tuned["threads"] <= available_cpus()


# -- the command line ----------------------------------------------------------------------------------------
TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(demo_dir, tmp_path_factory):
    from mai_core.cli import main

    ws = tmp_path_factory.mktemp("fastpath_ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(ws))
        out = ws / "ridge"
        assert main(["train", "--data", str(demo_dir), "--out", str(out), "--model", "ridge", *TINY]) == 0
        yield out


def test_cli_tta_views(tiny_run, demo_dir, tmp_path, capsys):
    import pandas as pd

    from mai_core.cli import main

    subs = {}
    for tta in ("1", "4", "on"):
        out = tmp_path / f"sub{tta}.csv"
        assert main(["predict", "--run", str(tiny_run), "--csv", str(demo_dir / "test.csv"), "--out", str(out),
                     "--tta", tta, "--quiet"]) == 0
        subs[tta] = pd.read_csv(out).iloc[:, 1:].to_numpy()
    assert not np.allclose(subs["1"], subs["4"]) and not np.allclose(subs["4"], subs["on"])
    m = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(demo_dir), "--split", "test", "--tta", "4",
                 "--out", str(m), "--quiet"]) == 0
    assert json.loads(m.read_text())["tta_views"] == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--run", str(tiny_run), "--csv", str(demo_dir / "test.csv"), "--out", str(tmp_path / "x.csv"),
              "--tta", "9"])
    assert exc.value.code == 2
    assert "1..8" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("shape", [(20, 60), (60, 12)])
def test_ridge_thin_svd_and_fit_match_the_textbook_solution(shape):
    """The Gram-matrix SVD reproduces LAPACK's, and the one-thread ridge fit equals (XᵀX + αI)⁻¹Xᵀy."""
    from mai_core.models.ridge import fit_ridge, predict_ridge, thin_svd

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    u, s, vt = thin_svd(x)
    assert np.allclose(s, np.linalg.svd(x, compute_uv=False)[: len(s)]) and np.allclose((u * s) @ vt, x)
    y = rng.standard_normal((shape[0], 4))
    fit = fit_ridge(x, y, alphas=(3.0,), pca=0)
    mu, sd = x.mean(0), x.std(0)
    xs, yc = (x - mu) / sd, y - y.mean(0)
    w = np.linalg.solve(xs.T @ xs + 3.0 * np.eye(shape[1]), xs.T @ yc)
    expected = (x[:5] - mu) / sd @ w + y.mean(0)
    assert fit.alpha == 3.0 and np.allclose(predict_ridge(fit, x[:5]), expected, atol=1e-4)


def test_thread_count_leaves_out_cores_busy_with_other_processes(monkeypatch):
    from mai_core import device
    from mai_core.models import fastpath

    assert fastpath.idle_cpus is device.idle_cpus  # one count for models and the rest of the library
    monkeypatch.setattr(device, "available_cpus", lambda: 4)
    monkeypatch.delenv("MAI_CPU_THREADS", raising=False)
    for load, want in ((0.2, 4), (1.6, 2), (3.9, 1), (11.0, 1)):
        monkeypatch.setattr(device.os, "getloadavg", lambda load=load: (load, load, load))
        assert device.idle_cpus() == want, load
    monkeypatch.setenv("MAI_CPU_THREADS", "all")
    assert device.idle_cpus() == 4


def test_native_pools_follow_the_number_asked_for():
    from threadpoolctl import threadpool_info

    from mai_core import device

    before = device.cap_native_pools()
    try:
        for n in (1, 2, 1):
            assert device.cap_native_pools(n) == n
            pools = threadpool_info()
            assert pools, "numpy's BLAS or scikit-learn's OpenMP should be loaded"
            assert all(p["num_threads"] == n for p in pools), pools
    finally:
        device.cap_native_pools(before)


def test_no_gpu_device_node_means_no_cuda_without_importing_torch(monkeypatch):
    from mai_core import device

    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device.os, "listdir", lambda path: ["null", "tty0", "nvidiactl"])
    assert device._no_gpu_device_nodes()
    monkeypatch.setattr(device.os, "listdir", lambda path: ["null", "nvidia0", "nvidiactl"])
    assert not device._no_gpu_device_nodes()
    monkeypatch.setattr(device.os, "listdir", lambda path: ["dxg"])
    assert not device._no_gpu_device_nodes()
    monkeypatch.setattr(device.sys, "platform", "win32")
    assert not device._no_gpu_device_nodes()  # elsewhere torch is asked
