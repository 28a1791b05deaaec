"""Module lookup inside backbones: dotted sub-module paths, and token sequences as spatial maps."""

from __future__ import annotations

import re


from mai_core.errors import MaiError, Problem



# --------------------------------------------------------------------------------------------- Grad-CAM


def resolve_module(model, path: str):
    """Sub-module at a dotted ``path`` (``"stages.-1"``, ``"blocks.-1.norm1"``); negative indices allowed."""
    mod = model
    for part in str(path).split("."):
        try:
            if re.fullmatch(r"-?\d+", part):
                mod = list(mod.children())[int(part)] if not hasattr(mod, "__getitem__") else mod[int(part)]
            else:
                mod = getattr(mod, part)
        except (AttributeError, IndexError, TypeError) as exc:
            raise MaiError(f"module path {path!r} not found in {type(model).__name__}",
                           [Problem("gradcam layer", f"no sub-module {part!r}", "pick a path from model.named_modules()")]) from exc
    return mod


def tokens_to_map(tokens, grid: tuple[int, int] | None = None):
    """B×N×C tokens (with optional leading class/register tokens) -> B×C×h×w spatial map."""
    import math

    b, n, c = tokens.shape
    if grid is None:
        side = math.isqrt(n)
        while side > 0 and n - side * side > 16:  # allow up to 16 prefix tokens
            side -= 1
        grid = (side, side)
    h, w = grid
    prefix = n - h * w
    if prefix < 0 or h * w == 0:
        raise ValueError(f"cannot arrange {n} tokens on a {h}x{w} grid")
    return tokens[:, prefix:, :].reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
