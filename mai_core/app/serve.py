"""``python -m mai_core.app``: start the web app (``streamlit run app.py`` with the shipped settings), its first
page ready sooner."""

from __future__ import annotations

import argparse
import sys
import threading

DESCRIPTION = (
    "Start the web app: the same server as `streamlit run app.py` from the repository folder, with its settings "
    "(.streamlit/config.toml: 127.0.0.1, port 8501). The libraries the first page needs (numpy, pandas, the "
    "dataset reader) are imported before the server starts listening, and the dataset shown first (MAI_DATA, "
    "default: workspace/demo) is loaded and checked while it starts, not when the first visitor arrives, so "
    "the first page is drawn sooner. Stop it with Ctrl-C."
)
# what the first run of Home imports (python -X importtime on a fresh server: about 1 s on a 2-core machine)
EARLY_MODULES = ("numpy", "pandas", "PIL.Image", "streamlit.emojis", "mai_core.data.dataset", "mai_core.app.frame")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mai_core.app", description=DESCRIPTION, allow_abbrev=False)
    p.add_argument("--port", type=_port, metavar="N", help="port to listen on (default 8501, from the settings)")
    p.add_argument("--address", metavar="HOST",
                   help="address to listen on (default 127.0.0.1: this computer only). To let others reach the app, "
                        "read the README's 'Serving the app to others' first")
    return p


def early_imports(modules=EARLY_MODULES) -> None:
    """Import ``modules`` now, in this thread (a module that fails is left to the page that needs it). Not in a
    background thread beside the server's start: libraries that look a module up in ``sys.modules`` (plotly,
    Streamlit) then met pandas half-imported and failed."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            continue


def preload_dataset() -> threading.Thread:
    """Load and check the dataset the first page shows (MAI_DATA, else the demo) into the app's resource cache,
    which all sessions share, in a background thread while the server starts (on the demo: 0.8 s of the first
    page's 1 s on the server, most of it decoding every image once). A session that arrives sooner waits for the same load
    instead of starting another; a dataset that cannot be loaded is left to the page, which says why."""
    import logging

    def work() -> None:
        from mai_core.app import frame

        # outside a page, Streamlit's caches warn once per call that no page is running: expected here
        quiet = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            frame.cached_dataset(frame.default_dataset_path())
        except Exception:
            pass
        finally:
            quiet.setLevel(level)

    thread = threading.Thread(target=work, name="mai-preload-dataset", daemon=True)
    thread.start()
    return thread


def streamlit_run_args(app_path, port: int | None = None, address: str | None = None) -> list[str]:
    """The arguments of ``streamlit run`` for this command's options."""
    args = ["run", str(app_path)]
    if port is not None:
        args += ["--server.port", str(port)]
    if address:
        args += ["--server.address", address]
    return args


def main(argv: list[str] | None = None) -> int:
    import os
    from pathlib import Path

    from mai_core.errors import MaiError, Problem

    args = build_parser().parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    app_path = root / "app.py"
    if not (app_path.is_file() and (root / "pages").is_dir()):
        err = MaiError("the app's files are not next to this mai_core",
                       [Problem(str(root), "no app.py and pages/ here (mai_core was installed without the app)",
                                "run the command from a clone of the repository, whose mai_core/ sits beside app.py")])
        print(err.render(), file=sys.stderr)
        return 2
    os.chdir(root)  # Streamlit reads the shipped settings from ./.streamlit/config.toml
    early_imports()
    preload_dataset()
    from streamlit.web import cli as streamlit_cli

    return int(streamlit_cli.main(args=streamlit_run_args(app_path, args.port, args.address),
                                  prog_name="streamlit", standalone_mode=False) or 0)
