"""The slide viewer's science, without Streamlit: a loaded prediction and the figures drawn from it.

A :class:`SlideMap` holds one slide prediction in memory (coordinates, predicted and measured expression,
labels, programmes, the thumbnail). :func:`map_figure` turns one per-spot quantity into a Plotly figure:
the H&E thumbnail as a background image in full-resolution coordinates and one WebGL scatter of spots,
optionally the measured map beside it with linked axes. Pan and zoom happen in the browser on that one
payload (no rerun, no recomputation); the payload is a few hundred kB for 20,000 spots (values as typed
arrays, thumbnail as JPEG), far below the 10 MB budget checked by :func:`payload_bytes`.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem

MAX_PAYLOAD = 10 * 1024 * 1024
TOOLBAR_PX = 34  # height of Plotly's toolbar (mode bar) at the top right of a chart, kept free of titles
SHORT_UNITS = {"log1p(counts / spot total × 10,000)": "log1p(counts per 10k)",
               "counts / spot total × 10,000": "counts per 10k", "log1p(counts)": "log1p(counts)",
               "raw counts": "counts"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]


@dataclass
class SlideMap:
    path: Path
    ids: np.ndarray  # n str
    xy: np.ndarray  # n×2 float32, full-resolution pixels
    genes: list[str]
    pcc: np.ndarray  # G validation Pearson r (NaN unknown)
    X: np.ndarray  # n×G predicted
    measured: np.ndarray | None
    labels: np.ndarray | None
    programmes: pd.DataFrame | None
    thumb: np.ndarray
    scale: float  # thumbnail px per full-resolution px
    spot_px: float  # spot diameter in full-resolution px
    width: int
    height: int
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def units(self) -> str:
        return str(self.meta.get("units", "predicted expression"))

    @property
    def dot_px(self) -> float:
        """Diameter of a dot on the map in slide pixels: the spot, or for a grid the tile the model read (not the
        grid step, so the H&E shows between neighbouring tiles)."""
        if self.meta.get("positions") == "grid":
            return min(self.spot_px, float(self.meta.get("read_px", self.spot_px)))
        return self.spot_px

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise MaiError(f"gene {gene} is not in this prediction", [Problem(str(self.path), "unknown gene",
                                                                              "pick one of the listed genes")]) from None

    def genes_by_trust(self) -> list[str]:
        """Genes sorted by validation Pearson r, best first (unknown last)."""
        key = np.where(np.isfinite(self.pcc), -self.pcc, np.inf)
        return [self.genes[i] for i in np.argsort(key, kind="stable")]

    def spot_patch(self, i: int, slide=None) -> np.ndarray:
        """The tile the model saw at spot ``i`` (read from the slide again)."""
        from mai_core.data.wsi import open_slide

        image = self.meta.get("image")
        if slide is None:
            if not image or not Path(image).is_file():
                raise MaiError("the slide image is no longer there", [Problem(str(image), "not found",
                                                                             "put the image back to see patches")])
            slide = open_slide(image, mpp=self.meta.get("slide_mpp"))
        read_px, patch_px = int(self.meta.get("read_px", 224)), int(self.meta.get("patch_px", 224))
        return slide.read_patch(int(round(self.xy[i, 0])), int(round(self.xy[i, 1])), read_px, patch_px)


def load_slide_map(path) -> SlideMap:
    """Read a slide prediction written by ``predict-slide`` (or any AnnData with uns['spatial'])."""
    from mai_core.data.anndata_io import read_h5ad, spatial_library

    path = Path(path).expanduser()
    ad = read_h5ad(path)
    if "spatial" not in ad.obsm:
        raise MaiError("this AnnData has no spot coordinates", [Problem(str(path), "no obsm['spatial']",
                                                                        "open a file written by predict-slide")])
    lib = spatial_library(ad)
    meta = dict(ad.uns.get("mai", {}))
    xy = np.asarray(ad.obsm["spatial"], dtype=np.float32)[:, :2]
    if lib:
        block = ad.uns["spatial"][lib]
        thumb = np.asarray(block["images"].get("hires", next(iter(block["images"].values()))))
        sf = block.get("scalefactors", {})
        scale = float(sf.get("tissue_hires_scalef", 1.0))
        spot_px = float(sf.get("spot_diameter_fullres", 100.0))
    else:
        w, h = float(xy[:, 0].max() + 1), float(xy[:, 1].max() + 1)
        scale = min(1.0, 1000 / max(w, h))
        thumb = np.full((max(1, int(h * scale)), max(1, int(w * scale)), 3), 255, np.uint8)
        spot_px = 100.0
    if thumb.dtype != np.uint8:
        thumb = (np.clip(thumb, 0, 1) * 255).astype(np.uint8) if thumb.max() <= 1.0 else thumb.astype(np.uint8)
    X = ad.X.toarray() if hasattr(ad.X, "toarray") else np.asarray(ad.X)
    measured = np.asarray(ad.layers["measured"], dtype=np.float32) if "measured" in ad.layers else None
    labels = ad.obs["label"].astype(str).to_numpy() if "label" in ad.obs.columns else None
    programmes = None
    if "programmes" in ad.obsm:
        programmes = pd.DataFrame(ad.obsm["programmes"])
        programmes.index = ad.obs_names
    pcc = ad.var["val_pcc"].to_numpy(np.float32) if "val_pcc" in ad.var.columns else np.full(ad.n_vars, np.nan, np.float32)
    width = int(meta.get("slide_width", round(thumb.shape[1] / scale)))
    height = int(meta.get("slide_height", round(thumb.shape[0] / scale)))
    ids = ad.obs["spot"].astype(str).to_numpy() if "spot" in ad.obs.columns else ad.obs_names.to_numpy().astype(str)
    return SlideMap(path, ids, xy, [str(g) for g in ad.var_names], pcc, np.asarray(X, dtype=np.float32), measured,
                    labels, programmes, thumb, scale, spot_px, width, height, meta)


def spot_clusters(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means clusters of spots on the first principal components of standardised predictions."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = int(k)
    if not 2 <= k <= min(30, len(X)):
        raise MaiError("invalid number of clusters", [Problem("clusters", f"{k}", "pick 2 to 30 (and no more than spots)")])
    Z = np.asarray(X, np.float64)
    sd = Z.std(0)
    Z = np.divide(Z - Z.mean(0), sd, out=np.zeros_like(Z), where=sd > 1e-12)
    n_comp = max(1, min(20, Z.shape[1], Z.shape[0] - 1))
    emb = PCA(n_comp, random_state=seed, svd_solver="randomized").fit_transform(Z) if Z.shape[1] > n_comp else Z
    return KMeans(k, n_init=4, random_state=seed).fit_predict(emb).astype(np.int32)


def thumbnail_uri(thumb: np.ndarray, max_side: int = 1600, quality: int = 85) -> str:
    """A JPEG data URI of the thumbnail (downscaled to ``max_side``)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(thumb))
    if max(im.size) > max_side:
        f = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * f)), max(1, round(im.size[1] * f))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def robust_range(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(v.min()), float(v.min()) + 1e-6)


def _keep_on_select(opacity: float, size: float) -> dict:
    """Marker styles that keep the whole map visible after a click (Plotly fades unselected points by default)
    and draw the clicked spot larger."""
    return dict(selected=dict(marker=dict(opacity=1.0, size=size * 1.8)),
                unselected=dict(marker=dict(opacity=opacity)))


def _spot_trace(go, sm: SlideMap, values, colorscale: str, opacity: float, size: float, cbar: dict | None,
                crange=None, show_scale: bool = True, what: str = "", unit: str = ""):
    finite = np.isfinite(values)
    idx = np.flatnonzero(finite).astype(np.int32)
    lo, hi = crange or robust_range(values[finite])
    value = f"{what}: " if what else ""
    return go.Scattergl(
        x=sm.xy[idx, 0], y=sm.xy[idx, 1], mode="markers", customdata=idx, text=sm.ids[idx],
        marker=dict(color=values[idx].astype(np.float32), colorscale=colorscale, cmin=lo, cmax=hi, size=size,
                    opacity=opacity, showscale=show_scale, colorbar=cbar), **_keep_on_select(opacity, size),
        hovertemplate=f"spot %{{text}}<br>{value}%{{marker.color:.3f}} {unit}<extra></extra>", showlegend=False)


def _category_traces(go, sm: SlideMap, cats: np.ndarray, opacity: float, size: float, outline: bool = False,
                     legend: str = ""):
    traces = []
    names = [c for c in pd.unique(cats) if str(c) != ""]
    for k, c in enumerate(sorted(names, key=str)):
        idx = np.flatnonzero(cats == c).astype(np.int32)
        colour = PALETTE[k % len(PALETTE)]
        marker = dict(color=colour, size=size, opacity=opacity) if not outline else \
            dict(color=colour, size=size * 1.35, symbol="circle-open", line=dict(width=2, color=colour))
        traces.append(go.Scattergl(x=sm.xy[idx, 0], y=sm.xy[idx, 1], mode="markers", customdata=idx,
                                   text=sm.ids[idx], marker=marker, name=f"{legend}{c}", legendgroup=str(c),
                                   **({} if outline else _keep_on_select(opacity, size)),
                                   hovertemplate=f"spot %{{text}}<br>{c}<extra></extra>"))
    return traces


def map_figure(sm: SlideMap, values, title: str, unit: str = "", measured=None, categorical: bool = False,
               opacity: float = 0.8, colorscale: str = "Viridis", outline_labels: bool = False,
               selected: int | None = None, shared_range: bool = False, width_px: int = 900, height_px: int = 640,
               thumb_uri: str | None = None, agreement: tuple[float, int] | None = None,
               measured_title: str | None = None):
    """Plotly figure: thumbnail + spots coloured by ``values`` (beside ``measured`` when given).

    Each panel is titled (what, predicted or measured; with ``agreement`` = (Pearson r, spots) the measured
    title says how far the two maps agree on this section); colour bars carry ``unit`` (shortened by
    :func:`short_units`) and sit in the gap between panels, clear of the other map; the top margin keeps the
    titles clear of Plotly's toolbar."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = 2 if measured is not None else 1
    unit = short_units(unit) if unit else ""
    titles = [title if categorical else f"{title} — predicted"]
    if panels == 2:
        r, n = agreement if agreement is not None else (float("nan"), 0)
        titles.append((measured_title or f"{title} — measured") + (f" · r {r:.2f} with predicted ({n:,} spots)" if np.isfinite(r) else ""))
    fig = make_subplots(1, panels, horizontal_spacing=0.16 if panels == 2 else 0.06, subplot_titles=titles)
    # screen px per slide px: the panel is bound by its width or by the chart's height, whichever is tighter
    spacing = 0.16 if panels == 2 else 0.0
    fit = min(width_px * (1 - spacing) / panels / sm.width, (height_px - TOOLBAR_PX - 28) / sm.height)
    size = float(np.clip(sm.dot_px * fit, 3, 30))
    uri = thumb_uri or thumbnail_uri(sm.thumb)
    values = np.asarray(values)
    crange = None
    if shared_range and measured is not None and not categorical:
        crange = robust_range(np.concatenate([values[np.isfinite(values)], measured[np.isfinite(measured)]]))
    for col, vals in enumerate([values] + ([np.asarray(measured)] if panels == 2 else []), start=1):
        xa = "x" if col == 1 else f"x{col}"
        ya = "y" if col == 1 else f"y{col}"
        fig.add_layout_image(dict(source=uri, xref=xa, yref=ya, x=0, y=0, sizex=sm.width, sizey=sm.height,
                                  xanchor="left", yanchor="top", sizing="stretch", layer="below"))
        if categorical:
            for t in _category_traces(go, sm, vals, opacity, size):
                t.showlegend = col == 1
                fig.add_trace(t, 1, col)
        else:
            x_bar = 1.0 if col == panels else float(fig.layout.xaxis.domain[1])
            cbar = dict(title=dict(text=unit, side="right"), x=x_bar + 0.01, xanchor="left", len=0.9, thickness=12)
            fig.add_trace(_spot_trace(go, sm, vals.astype(np.float64), colorscale, opacity, size, cbar, crange,
                                      show_scale=not (crange and col == 1),
                                      what="measured" if col == 2 else "predicted", unit=unit), 1, col)
        if outline_labels and sm.labels is not None:
            for t in _category_traces(go, sm, sm.labels, 1.0, size, outline=True, legend="annotation: "):
                t.showlegend = col == 1
                fig.add_trace(t, 1, col)
        if selected is not None and 0 <= selected < sm.n:
            fig.add_trace(go.Scattergl(x=[float(sm.xy[selected, 0])], y=[float(sm.xy[selected, 1])], mode="markers",
                                       marker=dict(size=size * 2.2, symbol="circle-open", color="#ff1744",
                                                   line=dict(width=3, color="#ff1744")),
                                       hoverinfo="skip", showlegend=False), 1, col)
        fig.update_xaxes(range=[0, sm.width], visible=False, constrain="domain", row=1, col=col)
        fig.update_yaxes(range=[sm.height, 0], visible=False, scaleanchor=xa, scaleratio=1, row=1, col=col)
        if col > 1:
            fig.update_xaxes(matches="x", row=1, col=col)
            fig.update_yaxes(matches="y", row=1, col=col)
    fig.update_layout(height=height_px, margin=dict(l=0, r=0, t=TOOLBAR_PX + 28, b=0),
                      dragmode="pan", plot_bgcolor="white", uirevision=str(sm.path),
                      legend=dict(orientation="h", y=-0.02), clickmode="event+select")
    return fig


def payload_bytes(fig) -> int:
    """Size of the figure as sent to the browser (its JSON)."""
    return len(fig.to_json().encode())


LAYER_KINDS = {"gene": "Gene", "programme": "Gene programme", "cluster": "Spot cluster", "label": "Pathologist label"}


@dataclass
class MapLayer:
    """One per-spot quantity ready to draw: values, the measured counterpart (or None), title and unit."""

    values: np.ndarray
    measured: np.ndarray | None
    title: str
    unit: str
    categorical: bool = False


def layer_kinds(sm: SlideMap) -> list[str]:
    """What this prediction can be coloured by (keys of :data:`LAYER_KINDS`)."""
    kinds = ["gene"] + (["programme"] if sm.programmes is not None and sm.programmes.shape[1] else [])
    kinds.append("cluster")
    return kinds + (["label"] if sm.labels is not None and (sm.labels != "").any() else [])


def map_layer(sm: SlideMap, kind: str, name: str | None = None, clusters: np.ndarray | None = None) -> MapLayer:
    """The values of one layer: a gene (predicted, measured beside it when known), a programme, clusters, labels."""
    if kind == "gene":
        j = sm.gene_index(name)
        meas = sm.measured[:, j] if sm.measured is not None else None
        if meas is not None and not np.isfinite(meas).any():
            meas = None
        r = sm.pcc[j]
        title = f"{name} (validation r {r:.2f})" if np.isfinite(r) else name
        return MapLayer(sm.X[:, j], meas, title, sm.units)
    if kind == "programme":
        if sm.programmes is None or name not in sm.programmes.columns:
            raise MaiError(f"no gene programme '{name}' in this prediction",
                           [Problem(str(sm.path), "unknown programme", "pick one of the listed programmes")])
        return MapLayer(sm.programmes[name].to_numpy(np.float64), None, f"programme {name}", "mean z-score")
    if kind == "cluster":
        if clusters is None or len(clusters) != sm.n:
            raise MaiError("no spot clusters computed", [Problem("clusters", "missing", "pick a number of clusters")])
        return MapLayer(np.array([f"cluster {c + 1}" for c in clusters], dtype=object), None,
                        "spot clusters", "", categorical=True)
    if kind == "label":
        if sm.labels is None:
            raise MaiError("this prediction has no pathologist labels", [Problem(
                str(sm.path), "no obs['label']", "predict again with --labels LABELS.tsv")])
        return MapLayer(sm.labels.astype(object), None, "pathologist labels", "", categorical=True)
    raise MaiError(f"unknown map layer '{kind}'", [Problem("layer", kind, f"use one of {', '.join(LAYER_KINDS)}")])


def spot_values(sm: SlideMap, i: int, genes: list[str]) -> pd.DataFrame:
    """Predicted and measured values of ``genes`` at spot ``i`` with each gene's validation r."""
    if not 0 <= int(i) < sm.n:
        raise MaiError("no such spot", [Problem(str(sm.path), f"spot index {i} of {sm.n}", "click a spot on the map")])
    idx = [sm.gene_index(g) for g in genes]
    measured = sm.measured[int(i), idx] if sm.measured is not None else np.full(len(idx), np.nan, np.float32)
    return pd.DataFrame({"gene": list(genes), "predicted": sm.X[int(i), idx].astype(np.float64),
                         "measured": measured.astype(np.float64), "validation r": sm.pcc[idx].astype(np.float64)})


def short_units(units: str) -> str:
    """A unit label short enough for a colour bar, a hover box or a table header: ``log1p(counts per 10k)``."""
    units = str(units)
    if units in SHORT_UNITS:
        return SHORT_UNITS[units]
    return "training-table units" if units.startswith("the units of the training table") else units


def section_agreement(sm: SlideMap, gene: str) -> tuple[float, int]:
    """Pearson r between the predicted and the measured map of ``gene`` over this section's measured spots, and
    how many spots that is (NaN when there are no counts, fewer than 3 spots or a flat map)."""
    j = sm.gene_index(gene)
    if sm.measured is None:
        return float("nan"), 0
    p, m = sm.X[:, j].astype(np.float64), sm.measured[:, j].astype(np.float64)
    ok = np.isfinite(p) & np.isfinite(m)
    n = int(ok.sum())
    if n < 3 or p[ok].std() < 1e-12 or m[ok].std() < 1e-12:
        return float("nan"), n
    return float(np.corrcoef(p[ok], m[ok])[0, 1]), n


def spot_scale_note(sm: SlideMap) -> str:
    """What one dot on the map is, in µm: a spot of the section (its diameter) or a grid tile, and the tile the
    model read around it."""
    mpp = float(sm.meta.get("slide_mpp") or 0)
    read_px = int(sm.meta.get("read_px", 224))
    if sm.meta.get("positions") == "grid":
        step = f", {sm.spot_px * mpp:.0f} µm apart" if mpp and sm.spot_px > read_px * 1.01 else ""
        return (f"Each dot is one tile of {read_px * mpp:.0f} µm × {read_px * mpp:.0f} µm on a grid over the "
                f"tissue{step}; dots keep their screen size when you zoom." if mpp else f"Each dot is one tile of {read_px} × {read_px} slide pixels (resolution unknown).")
    if not mpp:
        return f"Each dot is one spot (Ø {sm.spot_px:.0f} slide pixels; resolution unknown)."
    return (f"Each dot is one spot (Ø {sm.spot_px * mpp:.0f} µm); the model read the {read_px * mpp:.0f} µm × "
            f"{read_px * mpp:.0f} µm tile centred on it. Dots keep their screen size when you zoom.")


def spot_table(sm: SlideMap, i: int, genes: list[str]) -> pd.DataFrame:
    """:func:`spot_values` ready to show: the unit in the value headers, no measured column when the section has
    no counts for these genes, and "not measured" (not a blank) where only some genes have counts."""
    t = spot_values(sm, i, genes)
    unit = short_units(sm.units)
    if t["measured"].isna().all():
        t = t.drop(columns="measured")
    elif t["measured"].isna().any():
        t["measured"] = [f"{v:.3f}" if np.isfinite(v) else "not measured" for v in t["measured"]]
    if t["validation r"].isna().all():
        t = t.drop(columns="validation r")
    elif t["validation r"].isna().any():
        t["validation r"] = [f"{v:.2f}" if np.isfinite(v) else "unknown" for v in t["validation r"]]
    return t.rename(columns={"predicted": f"predicted, {unit}", "measured": f"measured, {unit}"})
