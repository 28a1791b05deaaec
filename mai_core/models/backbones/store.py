"""THE weight cache: ``workspace/cache/weights/<name>.safetensors`` plus ``<name>.json`` saying where it came
from (hub repository and commit, URL, or the hand-copied file), its checksums and its licence.

* :func:`pull_weights` downloads a backbone's or metric network's published weights (``hub.download``: progress,
  resume, checksum), checks every tensor against the architecture, and stores them as safetensors;
* :func:`import_weights` does the same for a file copied by hand (wrong shapes are refused, tensors named);
* :func:`verify_weights` re-checks what is stored; :func:`read_record` / :func:`provenance` say where a file came from.

A file at a cache path without a record was placed there by hand: it is used, but never replaced silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mai_core.errors import MaiError, Problem
from mai_core.models.backbones import hub
from mai_core.models.backbones.loading import (_pretrained_cfg, convert_state_dict, load_weights_into,
                                               read_state_dict)
from mai_core.models.backbones.registry import BackboneSpec, get_spec, log

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


@dataclass(frozen=True)
class MetricNet:
    """A network used by a perceptual metric (not a backbone): where its weights are published."""

    name: str
    description: str
    source: object  # hub.HubFile | hub.UrlFile
    licence: str
    check: str  # "alexnet" | "timm:<arch>"


METRIC_NETS: dict[str, MetricNet] = {
    "lpips-alex": MetricNet("lpips-alex", "LPIPS trunk: torchvision AlexNet, ImageNet (LPIPS' own linear layers "
                            "ship in the lpips package)", hub.UrlFile(ALEXNET_URL, "7be5be79"),
                            "bsd-3-clause (torchvision)", "alexnet"),
    "lpips-vgg": MetricNet("lpips-vgg", "LPIPS trunk: VGG-16, torchvision ImageNet weights (timm port)",
                           hub.HubFile("timm/vgg16.tv_in1k", "model.safetensors"), "bsd-3-clause", "timm:vgg16"),
}
ALIASES = {"dino": "vit_small_patch16_224.dino", "dino-vits16": "vit_small_patch16_224.dino"}


# --------------------------------------------------------------------------------------------- names and paths


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def canonical(name: str) -> str:
    """The registry or metric-network name for ``name`` (aliases resolved; MaiError when unknown)."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip())
    if key.lower() in METRIC_NETS:
        return key.lower()
    return get_spec(key).name


def weights_cache_path(name: str) -> Path:
    """Our own weight cache file for backbone or metric network ``name`` (``cache/weights/<name>.safetensors``)."""
    from mai_core.workspace import cache_dir

    return cache_dir() / "weights" / f"{_safe_name(canonical(name))}.safetensors"


def record_path(name: str) -> Path:
    return weights_cache_path(name).with_suffix(".json")


def read_record(name: str) -> dict | None:
    """The record of a stored file (None when absent, unreadable, or the file itself is gone)."""
    p = record_path(name)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and weights_cache_path(name).is_file() else None


def provenance(path) -> dict | None:
    """The record of ``path`` when it is one of our cache files, else None."""
    p = Path(path)
    rec_p = p.with_suffix(".json")
    if p.suffix != ".safetensors" or not rec_p.is_file():
        return None
    try:
        rec = json.loads(rec_p.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("file") == p.name else None


# --------------------------------------------------------------------------------------------- facts


def source_of(name: str):
    """Where ``name``'s pretrained weights are published (hub.HubFile / hub.UrlFile), or None."""
    key = canonical(name)
    if key in METRIC_NETS:
        return METRIC_NETS[key].source
    spec = get_spec(key)
    if spec.hub_repo:
        return hub.HubFile(spec.hub_repo, spec.hub_file or "model.safetensors")
    cfg = _pretrained_cfg(spec.timm_name)
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    repo, _, revision = repo.partition("@")
    return hub.HubFile(repo, cfg.get("hf_hub_filename") or "model.safetensors", revision or None)


def licence_of(name: str) -> str | None:
    key = canonical(name)
    if key in METRIC_NETS:
        return METRIC_NETS[key].licence
    spec = get_spec(key)
    return spec.licence or _pretrained_cfg(spec.timm_name).get("license")


def gated_of(name: str) -> bool:
    key = canonical(name)
    return key not in METRIC_NETS and bool(get_spec(key).gated)


# --------------------------------------------------------------------------------------------- checks


def _check(name: str, sd: dict, where: str) -> dict:
    """The state dict in the names our architecture uses, every tensor's shape checked (MaiError naming the
    mismatching tensors otherwise). Nothing is allocated for the model: the check runs on the meta device."""
    key = canonical(name)
    if key in METRIC_NETS:
        check = METRIC_NETS[key].check
        if check == "alexnet":
            _check_alexnet(sd, where)
        else:
            load_weights_into(check.split(":", 1)[1], sd, where, check_only=True)
        return sd
    spec: BackboneSpec = get_spec(key)
    sd = convert_state_dict(spec, sd)
    load_weights_into(spec.timm_name, sd, where, check_only=True)
    return sd


def _check_alexnet(sd: dict, where: str) -> None:
    import torch
    import torchvision

    with torch.device("meta"):
        ref = torchvision.models.alexnet(weights=None).features.state_dict()
    bad = []
    for k, t in ref.items():
        v = sd.get(f"features.{k}")
        if v is None:
            bad.append(Problem(f"{where} [features.{k}]", "missing", "use torchvision's AlexNet weights"))
        elif tuple(v.shape) != tuple(t.shape):
            bad.append(Problem(f"{where} [features.{k}]", f"shape {tuple(v.shape)} but AlexNet has {tuple(t.shape)}",
                               "use torchvision's AlexNet weights"))
    if bad:
        raise MaiError(f"weights in {where} are not torchvision's AlexNet ({len(bad)} tensors differ)", bad)


# --------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One writer per cache entry (a second pull of the same weights is refused, not interleaved).

    A ``filelock`` lock: an OS-level lock on POSIX and Windows alike, released when its holder dies."""
    from filelock import FileLock, Timeout

    path = weights_cache_path(name).parent / ".locks" / f"{_safe_name(canonical(name))}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise MaiError(f"the {canonical(name)} weights are being written by another process",
                       hint="wait for that pull or import to finish (see the job list), then try again") from None
    try:
        yield
    finally:
        lock.release()


def _refuse_foreign(name: str, force: bool) -> None:
    target = weights_cache_path(name)
    if target.exists() and read_record(name) is None and not force:
        raise MaiError(f"{target} exists and was not written by mai_core",
                       [Problem(str(target), "a hand-placed weights file (no record next to it)",
                                "move it away, record it with `weights import`, or pass --force to replace it")])


def _store(name: str, sd: dict, original: Path, record: dict, move: bool) -> dict:
    """Write ``sd`` (or move ``original``, already safetensors in our names) to the cache, then the record."""
    from safetensors.torch import save_file

    from mai_core.io import atomic_path, write_json

    target = weights_cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".safetensors") as tmp:
        if move:
            os.replace(original, tmp)
        else:
            tensors = {k: v.detach().contiguous() for k, v in sd.items()}
            try:
                save_file(tensors, str(tmp), metadata={"source": record.get("label", ""), "backbone": name})
            except RuntimeError:  # tensors sharing memory (tied weights): store independent copies
                save_file({k: v.clone() for k, v in tensors.items()}, str(tmp),
                          metadata={"source": record.get("label", ""), "backbone": name})
    record = dict(record, file=target.name, file_sha256=hub.file_sha256(target), size=target.stat().st_size)
    write_json(record_path(name), record)
    return record


def _base_record(name: str, source: str, label: str) -> dict:
    key = canonical(name)
    spec = None if key in METRIC_NETS else get_spec(key)
    return {"name": key, "kind": "metric" if spec is None else "backbone", "source": source, "label": label,
            "arch": spec.timm_name if spec is not None else METRIC_NETS[key].check,
            "licence": licence_of(key), "gated": gated_of(key),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _hub_config(src, key: str, partial: Path, timeout: float) -> dict | None:
    """The repository's config.json (architecture, pretrained_cfg), checksum-verified; None when absent."""
    try:
        got = hub.download(hub.HubFile(src.repo, "config.json", src.revision), partial, _safe_name(key) + "-config",
                           name=key, cache_file=weights_cache_path(key), timeout=timeout, quiet=True)
    except MaiError as exc:
        log.info("%s: no config.json next to the weights (%s)", key, exc.message)
        return None
    try:
        cfg = json.loads(got.path.read_text())
    except (OSError, ValueError):
        cfg = None
    finally:
        got.path.unlink(missing_ok=True)
    if not isinstance(cfg, dict):
        return None
    arch = cfg.get("architecture")
    expected = None if key in METRIC_NETS else get_spec(key).arch
    if arch and expected and arch != expected and not get_spec(key).builder:
        log.warning("%s: the hub's config.json names architecture %s, the registry builds %s", key, arch, expected)
    keep = {k: cfg[k] for k in ("architecture", "num_features", "model_args") if k in cfg}
    pre = cfg.get("pretrained_cfg") or {}
    keep["pretrained_cfg"] = {k: pre[k] for k in ("tag", "license", "mean", "std", "input_size") if k in pre}
    return keep


def pull_weights(name: str, *, force: bool = False, quiet: bool = False, timeout: float = 10.0,
         on_progress: Callable[[int, int | None], None] | None = None) -> dict:
    """Download, verify, check and store ``name``'s published weights; returns the record.

    Already stored from the same source: nothing is downloaded (unless ``force``). Refusals (offline,
    gated, not found, corrupt, wrong shapes) raise MaiError and leave nothing in the cache.
    """
    key = canonical(name)
    src = source_of(key)
    if src is None:
        raise MaiError(f"{key} has no published pretrained weights to pull",
                       hint=f"import a weights file instead: python -m mai_core weights import FILE --backbone {key}")
    rec = read_record(key)
    if rec is not None and not force:
        if rec.get("label") == src.label:
            return dict(rec, already=True)
        raise MaiError(f"{key} already has weights in the cache ({rec.get('source')}: {rec.get('label')})",
                       [Problem(str(weights_cache_path(key)), "present", "pass --force to replace them")])
    _refuse_foreign(key, force)
    partial = weights_cache_path(key).parent / ".partial"
    with _locked(key):
        got = hub.download(src, partial, _safe_name(key), name=key, cache_file=weights_cache_path(key),
                           timeout=timeout, quiet=quiet, on_progress=on_progress)
        config = _hub_config(src, key, partial, timeout) if isinstance(src, hub.HubFile) else None
        try:
            sd = read_state_dict(got.path)
            ready = _check(key, sd, f"{src.label} ({got.path.name})")
            move = got.path.suffix == ".safetensors" and ready is sd
            record = _base_record(key, "hub" if isinstance(src, hub.HubFile) else "url", src.label)
            record.update(repo=getattr(src, "repo", None), filename=src.filename,
                          revision=getattr(src, "revision", None), commit=got.commit,
                          url=getattr(src, "url", None), sha256=got.sha256, checksum=got.checksum,
                          converted=ready is not sd, hub_config=config)
            record = _store(key, ready, got.path, record, move)
        finally:
            got.path.unlink(missing_ok=True)
    log.info("stored %s weights from %s at %s", key, src.label, weights_cache_path(key))
    return record


def import_weights(path, name: str, *, force: bool = False) -> dict:
    """Record a hand-copied weights file as ``name``'s weights (checked tensor by tensor first)."""
    key = canonical(name)
    p = Path(path).expanduser()
    if not p.is_file():
        raise MaiError(f"weights file {p} not found", [Problem(str(p), "no such file", "check the path")])
    if p.resolve() == weights_cache_path(key).resolve():
        raise MaiError(f"{p} already is the cache file of {key}", hint="nothing to import")
    rec = read_record(key)
    if rec is not None and not force:
        raise MaiError(f"{key} already has weights in the cache ({rec.get('source')}: {rec.get('label')})",
                       [Problem(str(weights_cache_path(key)), "present", "pass --force to replace them")])
    _refuse_foreign(key, force)
    sha = hub.file_sha256(p)
    sd = read_state_dict(p)
    ready = _check(key, sd, str(p))
    with _locked(key):
        record = _base_record(key, "import", str(p.resolve()))
        record.update(filename=p.name, sha256=sha, checksum="recorded at import", converted=ready is not sd)
        return _store(key, ready, p, record, move=False)


def verify_weights(names=None) -> list[dict]:
    """Re-check stored files: checksum against the record, every tensor against the architecture.

    Returns one row per file: name, ok, what (a sentence). Files without a record are reported, not judged.
    """
    from mai_core.workspace import cache_dir

    root = cache_dir() / "weights"
    wanted = {canonical(n) for n in names} if names else None
    rows = []
    for f in sorted(root.glob("*.safetensors")) if root.is_dir() else []:
        rec = provenance(f)
        key = (rec or {}).get("name") or f.stem
        if wanted is not None and key not in wanted:
            continue
        if rec is None:
            rows.append({"name": key, "ok": None, "what": "no record: placed by hand (record it with `weights import`)"})
            continue
        sha = hub.file_sha256(f)
        if sha != rec.get("file_sha256"):
            rows.append({"name": key, "ok": False, "what": f"checksum changed since it was stored ({sha[:12]}…)"})
            continue
        try:
            _check(key, read_state_dict(f), str(f))
        except MaiError as exc:
            rows.append({"name": key, "ok": False, "what": exc.message})
            continue
        rows.append({"name": key, "ok": True, "what": f"{rec.get('source')}: {rec.get('label')} (sha256 {sha[:12]}…)"})
    for n in sorted(wanted - {r["name"] for r in rows}) if wanted else []:
        rows.append({"name": n, "ok": False, "what": "not in the cache"})
    return rows
