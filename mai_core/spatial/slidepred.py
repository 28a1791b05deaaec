"""``predict_slide``: a trained run over a whole slide or a spatial section → an AnnData map.

Positions are the spots of a spot file (legacy ST, Visium, or ``id,px,py``) or, without one, a grid over
the tissue (:mod:`mai_core.spatial.tissue`) with the run's spot pitch (or the tile size) as step. Tiles are
streamed off the slide in batches (:mod:`mai_core.spatial.stream`) through the run's
``Predictor.predict_images`` — the same preprocessing and numbers as ``predict`` on imported patches — at
the run's training resolution (:mod:`mai_core.spatial.resolution`). Progress goes to stderr and, for
background jobs, to ``status.json``; Ctrl-C or SIGTERM stops between batches and writes nothing; the
``.h5ad`` is written atomically.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mai_core.errors import MaiError, Problem

SPOT_UM = {"st": 100.0, "visium": 55.0}


class Stopped(Exception):
    """Prediction was asked to stop (Ctrl-C, SIGTERM, or a cancel event)."""


def _status(status_dir, **fields) -> None:
    if status_dir is None:
        return
    from mai_core.runs import write_status

    write_status(status_dir, **fields)


def _labels_next_to(spots) -> Path | None:
    if spots is None:
        return None
    p = Path(spots)
    stem = p.name.split("_selection")[0] if "_selection" in p.name else p.stem
    cand = p.with_name(f"{stem}_labels.tsv")
    return cand if cand.is_file() else None


def _positions(slide, spots, grid_um, facts, plan_mpp, read_px: int, notes: list[str]):
    """(ids, centres n×2 int, array n×2 or None, kind, info) of the places to predict."""
    from mai_core.data.positions import check_inside, read_positions
    from mai_core.spatial.tissue import grid_centres, tissue_mask

    if spots is not None:
        pos = read_positions(spots)
        check_inside(pos, slide.width, slide.height, str(slide.path))
        notes += pos.notes
        centres = np.floor(pos.xy + 0.5).astype(np.int64)
        return pos.ids, centres, pos.array_xy, pos.kind, {"spots": str(Path(spots).resolve()), "platform": pos.platform}
    if grid_um is not None and plan_mpp is None:
        raise MaiError("--grid-um needs the slide's resolution", [Problem(
            str(slide.path), "µm per pixel unknown", "pass --mpp, or leave out --grid-um (grid step = tile size)")])
    step_um = grid_um if grid_um is not None else facts.spot_pitch_um
    step_px = step_um / plan_mpp if (step_um and plan_mpp) else float(read_px)
    thumb, scale = slide.thumbnail(2048)
    mask = tissue_mask(thumb)
    centres, grid = grid_centres(mask, scale, slide.width, slide.height, step_px, read_px)
    if not len(centres):
        raise MaiError("no tissue found on the slide", [Problem(
            str(slide.path), f"the tissue mask covers {mask.mean():.1%} of the thumbnail and no grid tile is "
            "half tissue", "pass spot positions with --spots, or check that this is an H&E image")])
    ids = [f"{c}x{r}" for c, r in grid]
    return ids, centres, grid.astype(np.float64), "grid", {
        "grid_um": None if not plan_mpp else round(step_px * plan_mpp, 3), "grid_px": round(step_px, 2),
        "tissue_fraction": round(float(mask.mean()), 4)}


def _extras(pred, run_path, ids, centres, array_xy, facts, counts, labels, spots, programmes, notes) -> dict:
    """Measured expression, labels and programmes, read and checked before any tile is predicted."""
    from mai_core.spatial.annotate import load_programmes, measured_expression, read_labels

    out = {"measured": None, "labels": None, "programmes": load_programmes(programmes, pred.genes, run_path)}
    if counts is not None:
        out["measured"] = measured_expression(counts, list(ids), pred.genes, facts.norm)
        m = out["measured"][1]
        notes.append(f"measured expression of {m['genes_measured']} genes at {m['spots_measured']} spots ({m['norm']})")
    found = labels if labels is not None else _labels_next_to(spots)
    if found is not None:
        try:
            out["labels"] = read_labels(found, list(ids), centres.astype(np.float64), array_xy)
        except MaiError as exc:
            if labels is not None:
                raise
            notes.append(f"labels file {found} not used: {exc.message}")
        if out["labels"] is not None:
            li = out["labels"][1]
            notes.append(f"pathologist labels for {li['labelled_spots']} spots (matched by {li['matched_by']})")
    return out


def _install_stop_handlers(stop: threading.Event):
    """SIGTERM (job stop) sets ``stop``; returns a function restoring the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def predict_slide(run, image, out, spots=None, grid_um: float | None = None, mpp: float | None = None,
                  run_mpp: float | None = None, tta=None, device: str = "auto", batch_size: int | None = None,
                  counts=None, labels=None, programmes=None, library: str | None = None,
                  max_pixels: int | None = None, workers: int = 2, progress: bool = True, status_dir=None,
                  stop: threading.Event | None = None, predictor=None, spatial: bool = True) -> dict:
    """Predict every spot (or tissue tile) of ``image`` with run ``run``; write the AnnData ``out``.

    ``spatial``: use the neighbouring spots or tiles on their grid: the run's context head when it has one,
    else neighbour smoothing with its recorded weight (``config.yaml`` ``spatial``; a note says which).

    Returns a summary dict (spots, genes, resolution plan, seconds, tiles per second, output path).
    """
    from mai_core.data.mpp import check_mpp, estimate_mpp
    from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
    from mai_core.data.wsi import open_slide
    from mai_core.runs import RunDir, load_predictor
    from mai_core.runs.contexthead import spatial_finish, spatial_model
    from mai_core.runs.neighbours import smoothing_weight
    from mai_core.spatial.output import build_anndata
    from mai_core.spatial.resolution import plan_read, run_facts
    from mai_core.spatial.stream import stream_tiles

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if out.suffix != ".h5ad":
        raise MaiError("output must be an .h5ad file", [Problem(str(out), "wrong extension", "pass --out NAME.h5ad")])
    if out.exists() and not out.is_file():
        raise MaiError("output exists and is not a file", [Problem(str(out), "a folder", "pass a file name")])
    stop = stop or threading.Event()
    _status(status_dir, state="running", progress=0.0, started=time.time(), pid=os.getpid(),
            error=None, eta_s=None)
    restore = _install_stop_handlers(stop)
    slide = None
    try:
        rd = RunDir(run)
        pred = predictor or load_predictor(rd.path, device=device)
        facts = run_facts(pred.config, rd.path)
        if run_mpp is not None:
            facts.mpp, facts.source = check_mpp(run_mpp, "--run-mpp"), "--run-mpp"
        slide = open_slide(image, mpp=mpp, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        notes: list[str] = []
        slide_mpp, slide_src = slide.mpp, slide.mpp_source
        if slide_mpp is None and spots is not None:
            from mai_core.data.positions import read_positions

            pos = read_positions(spots)
            if pos.platform:
                slide_mpp, slide_src = estimate_mpp(pos.xy, pos.array_xy, pos.platform)
        plan = plan_read(slide_mpp, facts.mpp, str(slide.path))
        notes.append(plan.note)
        ids, centres, array_xy, kind, pinfo = _positions(slide, spots, grid_um, facts, slide_mpp, plan.read_px, notes)
        n, genes = len(ids), pred.genes
        extras = _extras(pred, rd.path, ids, centres, array_xy, facts, counts, labels, spots, programmes, notes)
        # the run's context head (own + neighbour-mean embedding) needs every tile's embedding first
        model, head = spatial_model(pred, spatial, has_coords=True)
        X = np.empty((n, len(model.genes)), dtype=np.float32)
        if progress:
            print(f"{n} {'spots' if kind != 'grid' else 'tissue tiles'} · {len(genes)} genes · {plan.note}",
                  file=sys.stderr, flush=True)
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="predicting tiles", unit="tile", disable=not progress, file=sys.stderr)
        bs = int(batch_size or max(pred.batch_size, 32))
        done, t_pred, last = 0, time.perf_counter(), 0.0
        try:
            for idx, tiles in stream_tiles(slide, centres, plan.read_px, plan.patch_px, batch_size=bs,
                                           workers=workers, stop=stop):
                if stop.is_set():
                    break
                X[idx] = model.predict_images(tiles, tta=tta)
                done += len(idx)
                bar.update(len(idx))
                now = time.perf_counter()
                if status_dir is not None and (now - last > 1.0 or done == n):
                    rate = done / max(now - t_pred, 1e-9)
                    _status(status_dir, progress=done / n, eta_s=(n - done) / rate, epoch=done, epochs=n)
                    last = now
        finally:
            bar.close()
        if stop.is_set() or done < n:
            raise Stopped()
        seconds_pred = time.perf_counter() - t_pred
        X, spatial_note = spatial_finish(pred, head, X, (np.asarray(centres, dtype=float), None), enabled=spatial,
                                         what="tiles of the grid" if kind == "grid" else "spots")
        notes.append(spatial_note)
        thumb, scale = slide.thumbnail(2000)
        platform = pinfo.get("platform") or facts.platform
        if kind == "grid":
            spot_px = pinfo["grid_px"]
        elif platform in SPOT_UM and slide_mpp:
            spot_px = SPOT_UM[platform] / slide_mpp
        else:
            spot_px = float(plan.read_px)
        adata = build_anndata(
            pred, rd.path, X, ids, centres, array_xy, thumb, scale, spot_px, library=library or Path(image).stem,
            **extras, meta={
                "run": str(rd.path.resolve()), "image": str(Path(image).expanduser().resolve()),
                "slide_backend": slide.backend, "slide_width": slide.width, "slide_height": slide.height,
                "slide_mpp": slide_mpp, "slide_mpp_source": slide_src, "run_mpp": facts.mpp,
                "run_mpp_source": facts.source, "read_px": plan.read_px, "patch_px": plan.patch_px,
                "resampled": plan.resampled, "positions": kind, "tta_views": pred.tta_views if tta is None else
                (8 if tta is True else int(tta or 1)), "units": facts.units, "norm": facts.norm,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds_predict": round(seconds_pred, 3),
                "tiles_per_s": round(n / max(seconds_pred, 1e-9), 2),
                "spatial_smoothing": smoothing_weight(pred.config) if spatial and head is None else 0.0,
                "context_head": head is not None, **pinfo})
        adata.uns["mai"]["notes"] = list(notes)
        from mai_core.data.anndata_io import write_h5ad

        write_h5ad(adata, out)
        seconds = time.perf_counter() - t0
        _status(status_dir, state="finished", progress=1.0, eta_s=0.0, output=str(out.resolve()))
        return {"out": str(out.resolve()), "spots": n, "genes": len(genes), "positions": kind,
                "read_px": plan.read_px, "resampled": plan.resampled, "slide_mpp": slide_mpp, "run_mpp": facts.mpp,
                "notes": notes, "seconds": round(seconds, 2), "seconds_predict": round(seconds_pred, 2),
                "tiles_per_s": round(n / max(seconds_pred, 1e-9), 2)}
    except (Stopped, KeyboardInterrupt):
        _status(status_dir, state="stopped", error="stopped before the end: nothing was written")
        raise KeyboardInterrupt from None
    except MaiError as exc:
        _status(status_dir, state="failed", error=exc.render(limit=5))
        raise
    except Exception as exc:
        _status(status_dir, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        restore()
        if slide is not None:
            slide.close()


def format_result(info: dict) -> str:
    lines = [f"{info['out']}: {info['spots']} {'tiles' if info['positions'] == 'grid' else 'spots'} x "
             f"{info['genes']} genes in {info['seconds']:.1f} s ({info['tiles_per_s']:.1f} tiles/s)"]
    lines += [f"note: {n}" for n in info["notes"]]
    return "\n".join(lines)

