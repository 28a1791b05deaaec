"""Small widgets the pages share: saving with an overwrite question, names that follow their defaults,
widget values that survive being hidden, slider ranges that reach their extremes.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from mai_core.errors import MaiError


# ----------------------------------------------------------------------------------------------
# save, asking before an existing target is replaced
# ----------------------------------------------------------------------------------------------
def save_with_confirmation(key: str, what: str, name: str, target: Path | None, clicked: bool,
                           save: Callable[[bool], Any], describe: Callable[[Any], str] | None = None) -> Any:
    """Save ``name`` when ``clicked``; when ``target`` exists already, ask before replacing it.

    ``save(overwrite)`` does the work (``overwrite`` is True only after the user said so) and returns what
    was saved; ``describe(result)`` words the success message. The question stays on the page until the
    user answers it or changes the name. Returns the saved result, or None when nothing was saved in this run.
    """
    pending_key = f"_mai_confirm_{key}"
    pending = st.session_state.get(pending_key)
    if pending is not None and pending != name:
        st.session_state.pop(pending_key, None)  # the name changed: the question no longer applies
        pending = None
    overwrite = False
    if clicked:
        if target is not None and target.exists():
            st.session_state[pending_key] = name
            pending = name
        else:
            return _do_save(what, save, False, describe)
    if pending is not None:
        when = _modified(target)
        box = st.warning(f"A {what} named **{name}** already exists{when}. Replace it?", icon="⚠️")
        c1, c2, _ = st.columns([1, 1, 4])
        yes = c1.button("Replace", key=f"{key}_overwrite", type="primary")
        no = c2.button("Keep it", key=f"{key}_keep")
        if yes or no:
            st.session_state.pop(pending_key, None)
            box.empty()
        if no:
            st.info(f"Nothing saved: the existing {what} **{name}** is unchanged. Choose another name to save "
                    "this one next to it.")
        if yes:
            overwrite = True
            return _do_save(what, save, overwrite, describe)
    return None


def _modified(target: Path | None) -> str:
    try:
        stamp = os.stat(target).st_mtime  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""
    return f" (saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp))})"


def _do_save(what: str, save, overwrite: bool, describe) -> Any:
    from mai_core.app.guard import show_error

    try:
        result = save(overwrite)
    except MaiError as exc:
        show_error(exc)
        return None
    st.success(describe(result) if describe else f"Saved the {what}.")
    return result


# ----------------------------------------------------------------------------------------------
# text that follows a changing default until the user edits it
# ----------------------------------------------------------------------------------------------
def default_following_text(label: str, default: str, key: str, **kwargs) -> str:
    """A text input whose value is ``default`` — updated when the default changes — until the user types.

    Once the user has edited it, their text stays; clearing the field brings the default back.
    """
    auto_key = f"_mai_auto_{key}"
    current = st.session_state.get(key)
    if current is None or current == "" or current == st.session_state.get(auto_key):
        st.session_state[key] = default
    st.session_state[auto_key] = default
    return st.text_input(label, key=key, **kwargs)


# ----------------------------------------------------------------------------------------------
# widget values that survive runs in which the widget is not drawn
# ----------------------------------------------------------------------------------------------
def restore(key: str, default: Any = None) -> None:
    """Before drawing widget ``key``: bring back its last value (Streamlit forgets the value of a widget
    that was not drawn in a run, e.g. one shown only in another mode). Pass the widget no default."""
    kept = f"_mai_kept_{key}"
    if key not in st.session_state:
        if kept in st.session_state:
            st.session_state[key] = st.session_state[kept]
        elif default is not None:
            st.session_state[key] = default


def remember(key: str) -> None:
    """After drawing widget ``key``: keep its value for :func:`restore`."""
    if key in st.session_state:
        st.session_state[f"_mai_kept_{key}"] = st.session_state[key]


# ----------------------------------------------------------------------------------------------
# slider ranges
# ----------------------------------------------------------------------------------------------
def slider_range(largest: float, steps: int = 200, smallest: float = 0.0) -> tuple[float, float, int]:
    """``(top, step, decimals)`` for a float slider from ``smallest`` that reaches ``largest``.

    The step is a round number (1, 2 or 5 × 10^k) and ``top`` the first multiple of it at or above
    ``largest``, so the slider's maximum is reachable and no value is cut off.
    """
    span = max(float(largest) - float(smallest), 1e-9)
    raw = span / max(1, int(steps))
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    decimals = max(0, -int(math.floor(math.log10(step))))
    top = float(smallest) + math.ceil(round(span / step, 9)) * step
    top = round(top, decimals)
    if top < largest:
        top = round(top + step, decimals)
    return top, round(step, decimals), decimals
