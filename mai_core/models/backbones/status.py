"""Where each backbone's and metric network's weights would come from on this machine, their size and
their licence: the rows behind ``weights list``, ``backbones`` and the sidebar. Disk checks only; nothing
is downloaded or loaded."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mai_core.models.backbones import hub, store
from mai_core.models.backbones.registry import get_spec, list_backbones, log

LOCAL_SOURCES = ("cache", "cache-hub", "package")


@dataclass
class WeightStatus:
    """One row: ``state`` is ``stored`` (our cache, with a record), ``hand-placed`` (our cache path, no
    record), ``local`` (timm/HF cache or pip package), ``hub`` (not here; the hub may be asked), ``offline``
    (not here and downloads are off) or ``none`` (no published weights known)."""

    name: str
    kind: str  # imagenet | pathology | metric
    state: str
    where: str  # the local file, or the published source
    size_bytes: int | None  # of the local file, when there is one
    est_bytes: int | None  # of the float32 weights, from the architecture (download size ~ this)
    licence: str | None
    gated: bool
    published: str | None  # hub.HubFile / hub.UrlFile label
    note: str = ""

    @property
    def available(self) -> bool:
        return self.state in ("stored", "hand-placed", "local")

    def to_dict(self) -> dict:
        return asdict(self)


def _est_bytes(name: str, arch: str, memo: dict) -> int | None:
    """float32 size of an architecture, counted on the meta device (cached in the workspace)."""
    if arch in memo:
        return memo[arch]
    try:
        import torch

        with torch.device("meta"):
            if arch == "alexnet":
                import torchvision

                model = torchvision.models.alexnet(weights=None)
            else:
                from mai_core.models.backbones.loading import _new_model

                model = _new_model(arch, num_classes=0)
        n = int(sum(p.numel() for p in model.parameters()) * 4)
    except Exception as exc:  # an architecture this timm cannot build: no estimate
        log.debug("size estimate for %s failed: %s", name, exc)
        n = None
    memo[arch] = n
    return n


def _sizes_memo():
    import timm

    from mai_core.workspace import cache_dir

    path = cache_dir() / "weights" / ".sizes.json"
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get("_timm") != timm.__version__:
        memo = {"_timm": timm.__version__}
    return path, memo


def weight_status(name: str, estimate: bool = False, memo: dict | None = None) -> WeightStatus:
    """The status of one backbone or metric network (see :class:`WeightStatus`)."""
    from mai_core.models.backbones.weights import _weights_plan

    key = store.canonical(name)
    src = store.source_of(key)
    own = store.weights_cache_path(key)
    if key in store.METRIC_NETS:
        kind, arch, local = "metric", store.METRIC_NETS[key].check.removeprefix("timm:"), None
        note = store.METRIC_NETS[key].description
    else:
        spec = get_spec(key)
        kind, arch, note = spec.kind, spec.timm_name, spec.access_note or ""
        local = next(((s, p) for s, p in _weights_plan(spec, "auto") if s in LOCAL_SOURCES), None)
    if own.is_file():
        state, where = ("stored" if store.read_record(key) else "hand-placed"), str(own)
    elif local is not None:
        state, where = "local", str(local[1])
    elif src is None:
        state, where = "none", "no published weights known"
    else:
        state, where = ("offline" if hub.offline_reason() else "hub"), src.label
    size = None
    if state in ("stored", "hand-placed", "local"):
        try:
            size = int(Path(where).stat().st_size)
        except OSError:
            size = None
    est = _est_bytes(key, arch, memo if memo is not None else {}) if estimate else None
    return WeightStatus(key, kind, state, where, size, est, store.licence_of(key), store.gated_of(key),
                        src.label if src is not None else None, note)


def weights_table(estimate: bool = False) -> list[WeightStatus]:
    """Every registered backbone, then every metric network."""
    path = memo = None
    if estimate:
        path, memo = _sizes_memo()
    names = [s.name for s in list_backbones()] + list(store.METRIC_NETS)
    rows = [weight_status(n, estimate, memo) for n in names]
    if estimate and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(memo))
        except OSError:
            pass
    return rows

