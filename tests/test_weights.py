"""Weights: pull from a hub (emulated on 127.0.0.1), resume, checksum, gating, offline, import, verify,
licences in `weights list` / `backbones` / a run's config.yaml, and the pathology encoders' architectures.

The loopback server speaks the part of the Hugging Face hub protocol that ``huggingface_hub`` uses to fetch
a file: ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``, ``ETag`` /
``X-Linked-Etag`` (sha256 for large files, git blob sha1 for small ones), ``X-Linked-Size``, range requests,
and the ``X-Error-Code`` header of refusals (GatedRepo, RepoNotFound, EntryNotFound). It binds 127.0.0.1 on
a free port, serves from a daemon thread and shuts itself down after ``LIFETIME_S`` at the latest.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import mai_core.models.backbones as B
from mai_core.cli import main

LIFETIME_S = 120.0
COMMIT = "c0ffee" * 6 + "abcd"
TINY = "test_efficientnet.r160_in1k"  # timm's own test model: 99k parameters
TINY_REPO = "timm/test_efficientnet.r160_in1k"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    """In-memory repositories served over HTTP on 127.0.0.1 (see the module docstring)."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(LIFETIME_S, self.close)  # bounded: stops by itself
        self.timer.daemon = True
        self.timer.start()

    def close(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo: str, files: dict[str, bytes], gated: int | None = None, corrupt: str | None = None):
        self.repos[repo] = {"files": files, "gated": gated, "corrupt": corrupt}

    def handle(self, h: BaseHTTPRequestHandler, body: bool):
        self.requests.append({"method": h.command, "path": h.path, "range": h.headers.get("Range"),
                              "auth": h.headers.get("Authorization")})
        parts = h.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._send(h, 404, {"X-Error-Code": "RepoNotFound"}, b"", body)
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        entry = self.repos.get(repo)
        if entry is None:
            return self._send(h, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                              b"", body)
        if entry["gated"]:
            return self._send(h, entry["gated"], {"X-Error-Code": "GatedRepo", "X-Error-Message":
                              f"Access to model {repo} is restricted. You must have access to it."}, b"", body)
        data = entry["files"].get(filename)
        if data is None:
            return self._send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", body)
        large = filename.endswith((".safetensors", ".bin"))
        etag = hashlib.sha256(data).hexdigest() if large else git_blob_sha1(data)
        served = data
        if entry["corrupt"] == filename:  # same length, different bytes: only the checksum can tell
            served = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if large:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        start = 0
        rng = h.headers.get("Range")
        if rng and body and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
            return self._send(h, 206, headers, served[start:], body)
        return self._send(h, 200, headers, served, body)

    @staticmethod
    def _send(h, code, headers, payload: bytes, body: bool):
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body and payload:
            h.wfile.write(payload)

    def gets(self, filename: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"].endswith("/" + filename)]


def tiny_files(offset: float = 0.25) -> tuple[bytes, dict]:
    """A timm repository for the tiny model: model.safetensors (distinguishable from the seeded init) and
    config.json, as timm publishes them."""
    import timm
    from safetensors.torch import save

    model = timm.create_model("test_efficientnet", pretrained=False)
    sd = {k: (v + offset if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    blob = save(sd)
    config = {"architecture": "test_efficientnet", "num_classes": 1000, "num_features": model.num_features,
              "pretrained_cfg": {"tag": "r160_in1k", "license": "apache-2.0", "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "input_size": [3, 160, 160]}}
    return blob, {"model.safetensors": blob, "config.json": json.dumps(config).encode(), "_sd": sd}


@pytest.fixture()
def hub_server(monkeypatch, tmp_path):
    hub = Hub()
    monkeypatch.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login, an empty hub cache
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"), raising=False)
    yield hub
    hub.close()


def cache_files(ws: Path) -> list[str]:
    root = ws / "cache" / "weights"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts) \
        if root.is_dir() else []


# ---------------------------------------------------------------------------------------------- pull + train


@pytest.mark.slow
def test_pull_then_train_uses_the_stored_weights(hub_server, tmp_path, demo_dir, capsys):
    blob, files = tiny_files()
    sd = files.pop("_sd")
    hub_server.add(TINY_REPO, files)
    assert main(["weights", "pull", TINY, "--quiet"]) == 0
    out = capsys.readouterr().out
    sha = hashlib.sha256(blob).hexdigest()
    assert f"{TINY}: stored" in out and "licence apache-2.0" in out and sha[:16] in out
    target = B.weights_cache_path(TINY)
    rec = B.read_record(TINY)
    assert rec["sha256"] == sha and rec["commit"] == COMMIT and rec["checksum"] == "sha256"
    assert rec["licence"] == "apache-2.0" and rec["hub_config"]["architecture"] == "test_efficientnet"
    assert cache_files(tmp_path / "ws") == sorted([target.name, target.with_suffix(".json").name])  # no partial
    assert len(hub_server.gets("model.safetensors")) == 1

    # a second pull finds it stored and downloads nothing
    assert main(["weights", "pull", TINY, "--quiet"]) == 0
    assert "already stored" in capsys.readouterr().out and len(hub_server.gets("model.safetensors")) == 1

    run = tmp_path / "ws" / "runs" / "pulled"
    assert main(["train", "--data", str(demo_dir), "--out", str(run), "--backbone", TINY, "--weights", "auto",
                 "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--workers", "1", "--quiet"]) == 0
    import yaml

    info = yaml.safe_load((run / "config.yaml").read_text())["model"]["weights_info"]
    assert info["source"] == "cache" and info["path"] == str(target)
    assert info["licence"] == "apache-2.0" and info["sha256"] == sha
    assert info["origin"] == f"hf://{TINY_REPO}/model.safetensors@{COMMIT}"
    assert len(hub_server.gets("model.safetensors")) == 1  # training did not download again
    model, _ = B.create_backbone(TINY)
    assert torch.equal(model.conv_stem.weight, sd["conv_stem.weight"])


def test_auto_fetches_from_a_reachable_hub_unless_offline(hub_server, tmp_path):
    blob, files = tiny_files(offset=0.5)
    sd = files.pop("_sd")
    hub_server.add(TINY_REPO, files)
    with B.offline_mode(True):  # train --offline: nothing is fetched, the warning says how to get them
        with pytest.warns(B.RandomWeightsWarning, match=f"weights pull {TINY}"):
            _, info = B.create_backbone(TINY)
    assert info.source == "random" and "offline mode was requested" in info.warning
    assert hub_server.requests == [] and cache_files(tmp_path / "ws") == []
    model, info = B.create_backbone(TINY)  # reachable: fetched, stored, used
    assert info.source == "hub" and info.path == str(B.weights_cache_path(TINY))
    assert info.licence == "apache-2.0" and info.sha256 == hashlib.sha256(blob).hexdigest()
    assert torch.equal(model.conv_stem.weight, sd["conv_stem.weight"])
    assert B.plan_weights(TINY) == ("cache", str(B.weights_cache_path(TINY)))


def test_resume_continues_a_partial_download(hub_server, tmp_path):
    blob, files = tiny_files()
    files.pop("_sd")
    hub_server.add(TINY_REPO, files)
    sha = hashlib.sha256(blob).hexdigest()
    partial = tmp_path / "ws" / "cache" / "weights" / ".partial"
    partial.mkdir(parents=True)
    half = len(blob) // 2
    (partial / f"{TINY}-{sha[:16]}.part").write_bytes(blob[:half])  # what an interrupted pull leaves
    rec = B.pull_weights(TINY, quiet=True)
    assert rec["sha256"] == sha
    gets = hub_server.gets("model.safetensors")
    assert [g["range"] for g in gets] == [f"bytes={half}-"]
    assert B.weights_cache_path(TINY).read_bytes() == blob


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("status", [401, 403])
def test_gated_repository_says_how_to_get_access(hub_server, tmp_path, monkeypatch, capsys, status):
    _, files = tiny_files()
    files.pop("_sd")
    hub_server.add("MahmoodLab/UNI", files, gated=status)
    if status == 403:
        monkeypatch.setenv("HF_TOKEN", "hf_test_token_without_access")
    assert main(["weights", "pull", "uni", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "access to MahmoodLab/UNI must be requested first" in err
    assert f"{hub_server.url}/MahmoodLab/UNI" in err and "request access" in err and "HF_TOKEN" in err
    assert ("no Hugging Face token is set" in err) == (status == 401)
    assert ("your token has no access" in err) == (status == 403)
    assert "python -m mai_core weights pull uni" in err and "Traceback" not in err
    if status == 403:
        assert hub_server.requests[0]["auth"] == "Bearer hf_test_token_without_access"
    assert cache_files(tmp_path / "ws") == []


def test_offline_names_the_command_to_run_elsewhere(hub_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "pull", "convnextv2_large.fcmae_ft_in22k_in1k"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1 is set" in err
    assert "python -m mai_core weights pull convnextv2_large.fcmae_ft_in22k_in1k" in err
    assert "weights import FILE --backbone convnextv2_large.fcmae_ft_in22k_in1k" in err
    assert hub_server.requests == [] and cache_files(tmp_path / "ws") == []
    # the same for a hub nobody answers at
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub_server.close()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)  # its port is closed now
    assert main(["weights", "pull", "lpips-vgg", "--timeout", "3"]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached from this machine" in err and "python -m mai_core weights pull lpips-vgg" in err


def test_corrupt_download_is_refused_and_nothing_is_kept(hub_server, tmp_path, capsys):
    _, files = tiny_files()
    files.pop("_sd")
    hub_server.add(TINY_REPO, files, corrupt="model.safetensors")
    assert main(["weights", "pull", TINY, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corrupt: checksum mismatch" in err and "deleted" in err
    assert cache_files(tmp_path / "ws") == []
    assert B.read_record(TINY) is None


def test_unknown_repository_and_missing_file(hub_server, capsys):
    assert main(["weights", "pull", "h-optimus-0", "--quiet"]) == 2  # no such repo on this hub
    assert "repository bioptimus/H-optimus-0 not found" in capsys.readouterr().err
    hub_server.add("bioptimus/H-optimus-0", {"README.md": b"card"})
    assert main(["weights", "pull", "h-optimus-0", "--quiet"]) == 2
    assert "pytorch_model.bin does not exist" in capsys.readouterr().err
    assert main(["weights", "pull", "no-such-backbone-xyz"]) == 2
    assert "unknown backbone" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- import / verify


def test_import_refuses_wrong_shapes_naming_the_tensors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
    from safetensors.torch import save_file

    _, files = tiny_files()
    sd = files["_sd"]
    bad = dict(sd)
    bad["conv_stem.weight"] = torch.zeros(4, 3, 3, 3)
    bad["bn2.weight"] = torch.zeros(7)
    save_file(bad, str(tmp_path / "copied.safetensors"))
    assert main(["weights", "import", str(tmp_path / "copied.safetensors"), "--backbone", TINY]) == 2
    err = capsys.readouterr().err
    assert "2 shape mismatches" in err and "conv_stem.weight" in err and "(4, 3, 3, 3)" in err
    assert "bn2.weight" in err and "(7,)" in err
    assert cache_files(tmp_path / "ws") == []

    torch.save({"state_dict": sd}, tmp_path / "good.pth")  # a .pth wrapped the usual way
    assert main(["weights", "import", str(tmp_path / "good.pth"), "--backbone", TINY]) == 0
    assert "stored" in capsys.readouterr().out
    rec = B.read_record(TINY)
    assert rec["source"] == "import" and rec["label"] == str((tmp_path / "good.pth").resolve())
    assert main(["weights", "import", str(tmp_path / "good.pth"), "--backbone", TINY]) == 2  # no silent replace
    capsys.readouterr()
    assert main(["weights", "verify"]) == 0
    assert f"ok   {TINY}" in capsys.readouterr().out
    target = B.weights_cache_path(TINY)
    target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)  # bit rot
    assert main(["weights", "verify", TINY]) == 2
    assert "FAIL" in capsys.readouterr().out


def test_hand_placed_file_is_never_replaced_silently(tmp_path, monkeypatch, hub_server, capsys):
    _, files = tiny_files()
    files.pop("_sd")
    hub_server.add(TINY_REPO, files)
    target = B.weights_cache_path(TINY)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"mine")
    assert main(["weights", "pull", TINY, "--quiet"]) == 2
    assert "not written by mai_core" in capsys.readouterr().err and target.read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------- listings


def test_list_and_backbones_show_licences_and_gating(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "list", "--no-sizes"]) == 0
    out = capsys.readouterr().out
    line = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "cc-by-nc-4.0" in line["convnextv2_large.fcmae_ft_in22k_in1k"]
    assert "cc-by-nc-nd-4.0" in line["uni2-h"] and " yes " in line["uni2-h"]
    assert "apache-2.0" in line["h-optimus-0"] and " yes " not in line["h-optimus-0"]
    assert "not here (offline)" in line["virchow2"] and "hf://paige-ai/Virchow2" in line["virchow2"]
    assert "alexnet-owt-7be5be79.pth" in line["lpips-alex"] and "downloads are off" in out
    assert main(["weights", "list", "--json", "--no-sizes"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {"uni", "uni2-h", "conch", "virchow2", "h-optimus-0", "h-optimus-1",
                                         "phikon-v2", "prov-gigapath", "lpips-alex", "lpips-vgg"}
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "licence" in out.splitlines()[0]
    assert any(ln.startswith("convnextv2_large") and "cc-by-nc-4.0" in ln for ln in out.splitlines())


# ---------------------------------------------------------------------------------------------- pathology encoders


@pytest.mark.parametrize("name,dim,mean0", [("uni", 1024, 0.485), ("uni2-h", 1536, 0.485), ("conch", 512, 0.48145466),
                                            ("virchow2", 2560, 0.485), ("h-optimus-0", 1536, 0.707223),
                                            ("h-optimus-1", 1536, 0.707223), ("phikon-v2", 1024, 0.485),
                                            ("prov-gigapath", 1536, 0.485)])
def test_pathology_encoders_have_their_own_embedding_and_normalisation(name, dim, mean0):
    from mai_core.models.backbones.loading import _new_model, spec_norm

    spec = B.get_spec(name)
    assert spec.kind == "pathology" and spec.num_features == dim and spec.hub_repo and spec.licence
    assert spec_norm(spec)[0][0] == pytest.approx(mean0)
    with torch.device("meta"):  # the architecture only
        model = _new_model(spec.timm_name, num_classes=0)
        out = model(torch.zeros(2, 3, 224, 224))
    assert tuple(out.shape) == (2, dim) and model.num_features == dim


def test_phikon_v2_transformers_checkpoint_maps_onto_timm():
    """A DINOv2 checkpoint in transformers' names loads into timm's ViT, q/k/v fused in order."""
    import timm

    from mai_core.models.backbones.pathology import dinov2_hf_to_timm

    ref = timm.create_model("vit_small_patch16_224", init_values=1e-5, num_classes=0).state_dict()
    hf = {"embeddings.cls_token": ref["cls_token"], "embeddings.mask_token": torch.zeros(1, 384),
          "embeddings.position_embeddings": ref["pos_embed"],
          "embeddings.patch_embeddings.projection.weight": ref["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": ref["patch_embed.proj.bias"],
          "layernorm.weight": ref["norm.weight"], "layernorm.bias": ref["norm.bias"]}
    for i in range(12):
        b = f"blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = ref[b + f"attn.qkv.{kind}"].chunk(3, 0)
            pre = f"encoder.layer.{i}."
            hf.update({pre + f"attention.attention.query.{kind}": q, pre + f"attention.attention.key.{kind}": k,
                       pre + f"attention.attention.value.{kind}": v,
                       pre + f"attention.output.dense.{kind}": ref[b + f"attn.proj.{kind}"],
                       pre + f"norm1.{kind}": ref[b + f"norm1.{kind}"], pre + f"norm2.{kind}": ref[b + f"norm2.{kind}"],
                       pre + f"mlp.fc1.{kind}": ref[b + f"mlp.fc1.{kind}"], pre + f"mlp.fc2.{kind}": ref[b + f"mlp.fc2.{kind}"]})
        hf[f"encoder.layer.{i}.layer_scale1.lambda1"] = ref[b + "ls1.gamma"]
        hf[f"encoder.layer.{i}.layer_scale2.lambda1"] = ref[b + "ls2.gamma"]
    out = dinov2_hf_to_timm(hf)
    assert set(out) == set(ref)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_conch_checkpoint_keeps_the_image_tower():
    from mai_core.models.backbones.loading import _new_model, convert_state_dict

    spec = B.get_spec("conch")
    with torch.device("meta"):
        model = _new_model(spec.timm_name, num_classes=0)
    full = {f"visual.{k}": torch.empty(v.shape) for k, v in model.state_dict().items()}
    full.update({"text.token_embedding.weight": torch.empty(10, 4), "visual.attn_pool_caption.query": torch.empty(3)})
    sd = convert_state_dict(spec, full)
    assert set(sd) == set(model.state_dict())
    B.load_weights_into("conch", sd, "conch.bin", check_only=True)  # every tensor fits


# ---------------------------------------------------------------------------------------------- the app


def resnet18_files() -> dict:
    import timm
    from safetensors.torch import save

    sd = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    return {"model.safetensors": save(sd)}


@pytest.mark.slow
def test_sidebar_pull_runs_as_a_background_job(hub_server, tmp_path, demo_dir, monkeypatch):
    """The sidebar's Pull button queues `weights pull NAME` as a job; it finishes and the status turns green."""
    from streamlit.testing.v1 import AppTest

    from mai_core.runs import jobs

    hub_server.add("timm/resnet18.a1_in1k", resnet18_files())
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert not _weights_counts(at), "the panel is drawn only while open"
    at.session_state["weights_panel_open"] = True  # the user opens the panel
    at.run()
    ready = _weights_counts(at)
    assert len(ready) == 1, [c.value for c in at.sidebar.caption]
    before = ready[0]
    at.selectbox(key="weights_pull_choice").set_value("resnet18").run()
    at.button(key="weights_pull_button").click().run()
    assert not at.exception, at.exception
    job = next(j for j in jobs.list_jobs() if j.id.startswith("pull-resnet18-"))
    assert job.command[-1] == "--online" and "--status-dir" in job.command
    done = jobs.wait(job.id, timeout_s=90)
    assert done.state == "finished", (done.error, jobs.log_tail(done, 30))
    assert B.read_record("resnet18")["repo"] == "timm/resnet18.a1_in1k"
    assert B.weight_status("resnet18").state == "stored"
    at.run()  # at once: a finished pull changes the cache, so the sidebar does not wait for its status to expire
    assert _weights_counts(at) == [before + 1]


def _weights_counts(at) -> list[int]:
    """How many backbones the sidebar's weights panel says have their weights here (one number per panel)."""
    import re

    found = [re.match(r"(\d+) of \d+ backbones have their weights", c.value) for c in at.sidebar.caption]
    return [int(m.group(1)) for m in found if m]


def test_results_caption_names_source_and_licence(tmp_path):
    import yaml

    from mai_core.app.weights import weights_caption

    run = tmp_path / "run"
    run.mkdir()
    info = {"source": "cache", "path": "/x/convnextv2.safetensors", "licence": "cc-by-nc-4.0",
            "origin": "hf://timm/convnextv2_large.fcmae_ft_in22k_in1k/model.safetensors@abc"}
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "run", "model": {
        "backbone": "convnextv2_large.fcmae_ft_in22k_in1k", "weights_info": info}}))
    text = weights_caption(run)
    assert "cc-by-nc-4.0" in text and "(non-commercial)" in text and info["origin"] in text
