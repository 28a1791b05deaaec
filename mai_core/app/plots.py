"""Plot conventions for the pages: toolbars that never cover legends or colour-bar titles, colours that
stay distinct beyond ten groups, ordered colours for ordered categories, text labels that do not collide.
"""

from __future__ import annotations

import colorsys

import numpy as np

# Plotly's "Dark24" then "Light24" qualitative sets (48 colours, distinct from each other); beyond them
# colours are generated on a golden-angle walk around the hue circle at alternating lightness.
_DISTINCT = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042", "#1616A7",
    "#DA60CA", "#6C4516", "#0D2A63", "#AF0038", "#FD3216", "#00FE35", "#6A76FC", "#FED4C4", "#FE00CE", "#0DF9FF",
    "#F6F926", "#FF9616", "#479B55", "#EEA6FB", "#DC587D", "#D626FF", "#6E899C", "#00B5F7", "#B68E00", "#C9FBE5",
    "#FF0092", "#22FFA7", "#E3EE9E", "#86CE00", "#BC7196", "#7E7DCD", "#FC6955", "#E48F72",
)
BACKGROUND = "#b0b0b0"  # the catch-all group ("unassigned", "other"): grey, drawn under the others

TOOLBAR_MARGIN = 44  # px above the plot area: room for Plotly's toolbar, so it never covers the plot's top
WEBGL_FROM = 5000  # points in a scatter from which WebGL draws it (below, SVG)


def scatter_mode(n_points: int) -> str:
    """Plotly Express ``render_mode`` for a scatter of ``n_points``: SVG up to :data:`WEBGL_FROM` points,
    WebGL beyond. A WebGL canvas costs a context to create, slow where the browser has no GPU acceleration
    (remote desktops, virtual machines, headless browsers draw it in software), and a page may hold only a
    few (browsers drop the oldest beyond about 16); SVG draws a few thousand points at once."""
    return "webgl" if int(n_points) > WEBGL_FROM else "svg"


def distinct_colours(n: int) -> list[str]:
    """``n`` colours, each distinct from the others (48 hand-picked, then generated)."""
    out = list(_DISTINCT[:n])
    i = 0
    while len(out) < n:
        h = (i * 0.618033988749895) % 1.0
        light = (0.38, 0.55, 0.7)[i % 3]
        r, g, b = colorsys.hls_to_rgb(h, light, 0.75)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
        i += 1
    return out


def group_colours(groups, background=("unassigned", "other")) -> dict[str, str]:
    """Group name → colour: distinct colours in the given order, grey for the catch-all groups."""
    names = [g for g in dict.fromkeys(str(g) for g in groups)]
    fg = [g for g in names if g not in background]
    out = dict(zip(fg, distinct_colours(len(fg))))
    out.update({g: BACKGROUND for g in names if g in background})
    return out


def ordered_colours(n: int, cmap: str = "viridis") -> list[str]:
    """``n`` colours along a perceptually uniform sequential map (for ordered categories), light end cut."""
    from matplotlib import colormaps

    cm = colormaps[cmap]
    pts = np.linspace(0.0, 0.85, max(n, 1)) if n > 1 else [0.5]
    return ["#%02x%02x%02x" % tuple(int(c * 255 + 0.5) for c in cm(float(p))[:3]) for p in pts][:n]


def tidy(fig, *, height: int | None = None, legend: str | None = "below", legend_title: str | None = None):
    """Layout every page chart shares: a top margin for the toolbar, legends below the plot (never under
    the toolbar), colour-bar titles along the bar. Returns ``fig``."""
    m = fig.layout.margin
    below = legend == "below" and any(t.showlegend is not False for t in fig.data) and len(fig.data) > 1 \
        or legend == "below" and legend_title is not None
    bottom = 10 if m.b is None else m.b
    if below:  # the legend sits in the figure's bottom margin, under the x-axis title
        bottom = max(bottom, 110 if legend_title else 90)
    fig.update_layout(margin=dict(l=10 if m.l is None else m.l, r=10 if m.r is None else m.r,
                                  b=bottom, t=max(TOOLBAR_MARGIN, m.t or 0)))
    if height:
        fig.update_layout(height=height)
    if below:
        fig.update_layout(legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.0, xanchor="left",
                                      x=0, title_side="top left" if legend_title else None))
    elif legend == "right":
        fig.update_layout(legend=dict(yanchor="top", y=0.92, xanchor="left", x=1.02))
    if legend_title is not None:
        fig.update_layout(legend_title_text=legend_title)
    fig.update_traces(selector=lambda t: hasattr(t, "colorbar"), colorbar=dict(title_side="right"))
    fig.for_each_coloraxis(lambda ax: ax.update(colorbar_title_side="right"))
    return fig


PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "autoScale2d", "toImage"]}


def label_positions(x, y, labels, width_px: float = 700.0, height_px: float = 420.0,
                    char_px: float = 7.0, line_px: float = 14.0) -> list[str]:
    """A Plotly ``textposition`` per point so that text labels overlap neither each other nor points.

    Greedy: points are placed in order of how crowded their neighbourhood is; each takes the first of
    eight positions whose label box (estimated from the label length) hits nothing placed so far, or the
    least-overlapping one. Coordinates are scaled to the plot's pixel size, so the test is in screen units.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n == 0:
        return []

    def scale(v, size):
        lo, hi = np.nanmin(v), np.nanmax(v)
        return (v - lo) / (hi - lo) * size * 0.9 if hi > lo else np.full_like(v, size / 2)

    px_, py_ = scale(x, width_px), scale(y, height_px)
    options = {  # label box (x0, x1, y0, y1) relative to its point, per textposition; w = label width
        "top center": lambda w: (-w / 2, w / 2, 4, 4 + line_px),
        "bottom center": lambda w: (-w / 2, w / 2, -4 - line_px, -4),
        "middle right": lambda w: (6, 6 + w, -line_px / 2, line_px / 2),
        "middle left": lambda w: (-6 - w, -6, -line_px / 2, line_px / 2),
        "top right": lambda w: (2, 2 + w, 2, 2 + line_px),
        "top left": lambda w: (-2 - w, -2, 2, 2 + line_px),
        "bottom right": lambda w: (2, 2 + w, -2 - line_px, -2),
        "bottom left": lambda w: (-2 - w, -2, -2 - line_px, -2),
    }
    widths = [len(str(t)) * char_px for t in labels]
    dist = np.hypot(px_[:, None] - px_[None, :], py_[:, None] - py_[None, :])
    crowd = (dist < 60).sum(axis=1)
    placed: list[tuple[float, float, float, float]] = []
    out = ["top center"] * n
    for i in np.argsort(-crowd, kind="stable"):
        best, best_cost = None, None
        for name, box in options.items():
            x0, x1, y0, y1 = box(widths[i])
            bx = (px_[i] + x0, px_[i] + x1, py_[i] + y0, py_[i] + y1)
            cost = sum(_overlap(bx, b) for b in placed)
            cost += sum(1.0 for j in range(n) if j != i and bx[0] - 3 <= px_[j] <= bx[1] + 3
                        and bx[2] - 3 <= py_[j] <= bx[3] + 3) * 50.0
            if best_cost is None or cost < best_cost:
                best, best_cost = (name, bx), cost
            if cost == 0:
                break
        out[i] = best[0]
        placed.append(best[1])
    return out


def _overlap(a, b) -> float:
    w = min(a[1], b[1]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[2], b[2])
    return w * h if w > 0 and h > 0 else 0.0
