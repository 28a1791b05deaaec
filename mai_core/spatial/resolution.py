"""What a run was trained on (resolution, spot pitch, expression units) and how to read a slide for it.

A run records the resolution of its training patches in ``config.yaml`` (``data_resolution``, written
from the dataset's import manifest). A slide is read so that its tiles cover the same tissue area:
``read_px = 224 × run mpp / slide mpp`` level-0 pixels resampled to 224, unless the two resolutions
agree within :data:`TOLERANCE` (then tiles are cut at native resolution, pixel for pixel like the
importer's patches). When the run's resolution is known and the slide's is not, prediction refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mai_core.data.images import PATCH_SIZE
from mai_core.errors import MaiError, Problem

TOLERANCE = 0.03  # relative mpp difference under which tiles are read at native resolution
NORM_UNITS = {
    "log1p_cp10k": "log1p(counts / spot total × 10,000)",
    "cp10k": "counts / spot total × 10,000",
    "log1p": "log1p(counts)",
    "raw": "raw counts",
}


@dataclass
class RunFacts:
    mpp: float | None
    spot_pitch_um: float | None
    platform: str | None
    norm: str | None
    units: str
    source: str


def _member_configs(cfg: dict, run_path: Path) -> list[dict]:
    from mai_core.runs import read_config

    out = []
    for m in cfg.get("members", []):
        p = Path(m.get("path", ""))
        if not p.is_absolute():
            p = (run_path / p).resolve()
        try:
            out.append(read_config(p))
        except MaiError:
            continue
    return out


def run_facts(cfg: dict, run_path) -> RunFacts:
    """Resolution, spot pitch and expression units a run (or an ensemble's members) was trained with."""
    from mai_core.data.importer import read_manifest

    cfgs = _member_configs(cfg, Path(run_path)) if cfg.get("kind") == "ensemble" else [cfg]
    res = [c.get("data_resolution") or {} for c in cfgs]
    mpps = [r.get("mpp") for r in res]
    mpp = None
    if mpps and all(mpps):
        lo, hi = min(mpps), max(mpps)
        if hi / lo - 1 <= TOLERANCE:
            mpp = float(sum(mpps) / len(mpps))
    pitches = {r.get("spot_pitch_um") for r in res}
    platforms = {r.get("platform") for r in res}
    norm = None
    for c in cfgs:
        try:
            m = read_manifest(c.get("data")) if c.get("data") else None
        except MaiError:
            m = None
        if m:
            norm = m.get("norm")
            break
    units = NORM_UNITS.get(norm, "the units of the training table") if norm else \
        "the units of the training table (no import manifest)"
    return RunFacts(mpp=mpp, spot_pitch_um=next(iter(pitches)) if len(pitches) == 1 else None,
                    platform=next(iter(platforms)) if len(platforms) == 1 else None, norm=norm, units=units,
                    source="config.yaml data_resolution" if mpp else "unknown")


@dataclass
class ReadPlan:
    read_px: int  # level-0 pixels per tile side
    patch_px: int  # pixels fed to the model
    resampled: bool
    note: str


def plan_read(slide_mpp: float | None, run_mpp: float | None, slide_where: str = "the slide",
              patch_px: int = PATCH_SIZE) -> ReadPlan:
    """How many slide pixels make one tile so it matches the run's training resolution."""
    if run_mpp is None:
        scale = f" = {patch_px * slide_mpp:.0f} µm" if slide_mpp else ""
        return ReadPlan(patch_px, patch_px, False,
                        f"the run does not record the resolution it was trained at: tiles are {patch_px} px of "
                        f"{slide_where} at its native resolution{scale}")
    if slide_mpp is None:
        raise MaiError("the slide's resolution is unknown", [Problem(
            slide_where, "no µm-per-pixel in its metadata, and no spot grid to estimate it from",
            f"pass --mpp (µm per pixel of this image); the run was trained at {run_mpp:.4g} µm/px")],
            hint="without it the tiles could cover a different tissue area than the training patches")
    ratio = run_mpp / slide_mpp
    if abs(ratio - 1) <= TOLERANCE:
        return ReadPlan(patch_px, patch_px, False,
                        f"slide {slide_mpp:.4g} µm/px, run {run_mpp:.4g} µm/px (within {TOLERANCE:.0%}): "
                        f"tiles read at native resolution ({patch_px} px = {patch_px * slide_mpp:.0f} µm)")
    read_px = max(8, int(round(patch_px * ratio)))
    return ReadPlan(read_px, patch_px, True,
                    f"slide {slide_mpp:.4g} µm/px, run {run_mpp:.4g} µm/px: tiles of {read_px} px resampled to "
                    f"{patch_px} px ({patch_px * run_mpp:.0f} µm)")
