"""Errors on a page: ours as readable messages, anything unexpected as a generic notice (its details go to
the server's console only), for whole pages (``frame.run_page``) and for fragments, which rerun on their own."""

from __future__ import annotations

import functools
import sys
import traceback
from contextlib import contextmanager

import streamlit as st

from mai_core.errors import MaiError


def show_error(exc: MaiError) -> None:
    """Render a MaiError as a readable list of problems (never a traceback)."""
    st.error(exc.message)
    if exc.problems:
        rows = [{"where": p.where, "problem": p.what, "how to fix": p.fix} for p in exc.problems]
        st.dataframe(rows, width="stretch", hide_index=True)
    if exc.hint:
        st.caption(exc.hint)


UNEXPECTED_ERROR = ("Something unexpected went wrong on this page. Its details were written to the server's "
                    "console, not shown here. Reload the page, or choose another dataset or run.")


@contextmanager
def shown_errors(where: str):
    """Our errors as messages, anything unexpected as a generic notice, for the block's drawing.

    The details of an unexpected error (type, text, traceback) go to the server's console only: they can
    name files and contents of the machine the app runs on. Streamlit's own stop/rerun signals pass through.
    """
    try:
        yield
    except MaiError as exc:
        show_error(exc)
    except Exception:
        print(f"unexpected error on {where}:", file=sys.stderr)
        traceback.print_exc()
        st.error(UNEXPECTED_ERROR)


def guarded(fn):
    """A fragment's body with the error handling of a page (``frame.run_page``): a fragment reruns on its own, outside
    the page's run, so an error inside it would otherwise reach Streamlit's own (wordless) notice. Put it
    under ``@st.fragment``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with shown_errors(f"part {fn.__qualname__!r}"):
            return fn(*args, **kwargs)

    return wrapper
