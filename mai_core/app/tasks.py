"""Long work off the script thread: a background task with a count, an ETA and a Cancel button.

A page starts a task with :func:`start_task` (a key, a label, and a function that takes ``report`` as a keyword
argument and calls ``report(done, total, what="")`` as it goes); the function runs in a thread of the
server process, so the page keeps rendering and the task survives reruns, navigation and reloads. The page
draws :func:`progress_panel`, a fragment that refreshes itself once a second while the task runs and reruns
the page once when it ends. Cancel sets a flag; the next ``report`` call raises :class:`Cancelled`, which
ends the work at its next step. Finished tasks keep their result until :func:`forget_task` (a few are kept).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from mai_core.app.guard import guarded
from mai_core.errors import MaiError

KEEP = 16  # finished tasks remembered (results of cheap keys are small; big ones are forgotten first)
POLL_S = 1.0


class Cancelled(Exception):
    """Raised inside a task's ``report`` once Cancel was pressed."""


@dataclass
class Task:
    key: str
    label: str
    unit: str = "steps"
    done: int = 0
    total: int | None = None
    what: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None
    result: Any = None
    error: str | None = None
    error_obj: MaiError | None = None
    cancelled: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.ended is None

    @property
    def ok(self) -> bool:
        return self.ended is not None and self.error is None and not self.cancelled

    def report(self, done: int, total: int | None = None, what: str = "") -> None:
        """Progress from the worker; raises :class:`Cancelled` once Cancel was pressed."""
        if self._cancel.is_set():
            raise Cancelled
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if what:
            self.what = what

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.total or self.done <= 0 or self.done >= self.total:
            return None
        return self.elapsed * (self.total - self.done) / self.done

    def text(self) -> str:
        """``label: 12/64 images · 0:23 elapsed · about 0:40 left``."""
        parts = [self.label]
        if self.total:
            parts[0] += f": {self.done:,}/{self.total:,} {self.unit}"
        if self.what:
            parts.append(self.what)
        parts.append(f"{fmt_duration(self.elapsed)} elapsed")
        if self.eta_s is not None:
            parts.append(f"about {fmt_duration(self.eta_s)} left")
        return " · ".join(parts)


def fmt_duration(seconds: float) -> str:
    s = int(round(max(0.0, float(seconds))))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_LOCK = threading.Lock()
_TASKS: OrderedDict[str, Task] = OrderedDict()


def get_task(key: str) -> Task | None:
    with _LOCK:
        return _TASKS.get(key)


def forget_task(key: str) -> None:
    with _LOCK:
        task = _TASKS.pop(key, None)
    if task is not None and task.running:
        task.cancel()


def start_task(key: str, label: str, fn: Callable[..., Any], *args, unit: str = "steps", **kwargs) -> Task:
    """Start ``fn(*args, report=..., **kwargs)`` in the background unless the same key runs or succeeded.

    A failed or cancelled task with this key is started again.
    """
    with _LOCK:
        old = _TASKS.get(key)
        if old is not None and (old.running or old.ok):
            _TASKS.move_to_end(key)
            return old
        task = Task(key=key, label=label, unit=unit)
        _TASKS[key] = task
        finished = [k for k, t in _TASKS.items() if not t.running]
        for k in finished[: max(0, len(_TASKS) - KEEP)]:
            del _TASKS[k]

    def work() -> None:
        try:
            task.result = fn(*args, report=task.report, **kwargs)
        except Cancelled:
            task.cancelled = True
        except MaiError as exc:
            task.error, task.error_obj = exc.message, exc
        except Exception as exc:  # shown as one line; the page never gets a traceback
            task.error = f"{type(exc).__name__}: {exc}"
        finally:
            task.ended = time.time()

    threading.Thread(target=work, name=f"mai-task-{key[:40]}", daemon=True).start()
    return task


def progress_panel(key: str, *, cancel_label: str = "Cancel") -> Task | None:
    """Draw the task's progress (count, elapsed, ETA) and a Cancel button; refresh while it runs.

    Returns the task as it was when drawn (None when no task has this key). Reruns the whole page once
    when the task ends, so the page can show its result.
    """
    task = get_task(key)
    if task is None:
        return None
    if task.running:
        _live_panel(key, cancel_label)
    elif task.cancelled:
        st.info(f"{task.label}: cancelled after {fmt_duration(task.elapsed)}.")
    elif task.error:
        if task.error_obj is not None:
            from mai_core.app.guard import show_error

            show_error(task.error_obj)
        else:
            st.error(f"{task.label} failed: {task.error}")
    return task


@st.fragment(run_every=POLL_S)
@guarded
def _live_panel(key: str, cancel_label: str) -> None:
    task = get_task(key)
    if task is None or not task.running:
        st.rerun(scope="app")  # ended (or forgotten): redraw the page once with the result
        return
    c1, c2 = st.columns([6, 1], vertical_alignment="center")
    c1.progress(task.fraction, text=task.text())
    if c2.button(cancel_label, key=f"task_cancel_{key}", width="stretch"):
        task.cancel()
        task.what = "cancelling at the next step…"
        c1.caption("Cancelling…")
