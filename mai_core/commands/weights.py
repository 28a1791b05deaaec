"""``python -m mai_core weights``: list, pull, import and verify pretrained weights (backbones, pathology
encoders, metric networks), with their licences."""

from __future__ import annotations

import os
import sys
import time

NAME = "weights"
HELP = "list, pull, import or verify pretrained weights and their licences"
DESCRIPTION = (
    "Pretrained weights live in the workspace cache (cache/weights/<name>.safetensors, with a .json record of "
    "where they came from, their checksum and licence). `pull` downloads them from the Hugging Face hub "
    "(HF_ENDPOINT mirrors, HF_TOKEN and proxies honoured) with progress, resume and checksum; gated models "
    "need access granted on their page and HF_TOKEN. Offline (HF_HUB_OFFLINE=1), run the pull where a network "
    "exists and copy the files, or `import` a hand-copied file."
)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("list", help="every backbone and metric network: where its weights come from, size, licence")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--no-sizes", action="store_true", help="skip the size estimate of weights not on this machine")
    p = sub.add_parser("pull", help="download weights into the workspace cache (progress, resume, checksum)")
    p.add_argument("names", nargs="+", metavar="NAME", help="backbone or metric network (see `weights list`)")
    p.add_argument("--force", action="store_true", help="download again and replace what is stored")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the hub (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--online", action="store_true",
                   help="this pull is an explicit request: ignore an HF_HUB_OFFLINE inherited from the environment")
    p.add_argument("--status-dir", metavar="DIR", help="also report progress in DIR/status.json (background jobs)")
    p = sub.add_parser("import", help="record a hand-copied weights file for a backbone (every tensor is checked)")
    p.add_argument("file", help=".safetensors, .pth, .pt or .bin state dict")
    p.add_argument("--backbone", required=True, metavar="NAME", help="backbone or metric network it belongs to")
    p.add_argument("--force", action="store_true", help="replace weights already stored for it")
    p = sub.add_parser("verify", help="re-check stored weights: checksum and every tensor's shape")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these (default: everything stored)")


def _mb(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


STATE_LABEL = {"stored": "stored", "hand-placed": "stored (no record)", "local": "local cache/package",
               "hub": "not here: pull", "offline": "not here (offline)", "none": "none published"}


def _list(args) -> int:
    import json

    from mai_core.models.backbones import offline_reason, weights_table

    rows = weights_table(estimate=not args.no_sizes)
    if args.json:
        for r in rows:
            print(json.dumps(r.to_dict()))
        return 0
    table = [("name", "kind", "weights", "size", "licence", "gated", "from")]
    for r in rows:
        size = _mb(r.size_bytes) if r.size_bytes is not None else (f"~{_mb(r.est_bytes)}" if r.est_bytes else "")
        table.append((r.name, r.kind, STATE_LABEL.get(r.state, r.state), size, r.licence or "unknown",
                      "yes" if r.gated else "", r.where))
    widths = [max(len(t[i]) for t in table) for i in range(6)]
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t[:6], widths)) + "  " + t[6])
    why = offline_reason()
    print(f"\n{sum(r.available for r in rows)} of {len(rows)} available on this machine"
          + (f"; downloads are off ({why})" if why else "") + ". `~` sizes are float32 estimates from the "
          "architecture. Non-commercial licences (cc-by-nc-*, other) restrict use; gated weights need access "
          "granted on their hub page and HF_TOKEN.")
    return 0


class _Status:
    """Progress of a pull in DIR/status.json, as a background job's run directory expects."""

    def __init__(self, folder: str | None, n: int):
        self.folder, self.n, self.t0 = folder, n, time.time()
        if folder:
            os.makedirs(folder, exist_ok=True)
            self.write(state="running", epoch=0, epochs=n, progress=0.0, started=self.t0, pid=os.getpid(),
                       error=None)

    def write(self, **fields) -> None:
        if self.folder:
            from mai_core.runs import write_status

            write_status(self.folder, **fields)

    def progress(self, i: int):
        last = [0.0]

        def report(done: int, total: int | None) -> None:
            now = time.time()
            if not self.folder or (now - last[0] < 1.0 and (total is None or done < total)):
                return
            last[0] = now
            frac = (done / total) if total else 0.0
            elapsed = now - self.t0
            overall = (i + min(frac, 1.0)) / self.n
            eta = elapsed * (1 - overall) / overall if overall > 0.01 else None
            self.write(state="running", epoch=i, epochs=self.n, progress=round(overall, 4), eta_s=eta)

        return report


def _pull(args) -> int:
    import signal

    from mai_core.errors import MaiError
    from mai_core.models.backbones import canonical, pull_weights

    if args.online:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.pop(var, None)
    names = [canonical(n) for n in args.names]  # unknown names fail before anything is downloaded
    status = _Status(args.status_dir, len(names))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for i, name in enumerate(names):
            rec = pull_weights(name, force=args.force, quiet=args.quiet, timeout=args.timeout,
                               on_progress=status.progress(i))
            what = "already stored" if rec.get("already") else "stored"
            print(f"{name}: {what} {rec.get('file')} ({_mb(rec.get('size'))}) from {rec.get('label')}"
                  + (f"@{rec['commit'][:12]}" if rec.get("commit") else "")
                  + f"; sha256 {str(rec.get('sha256'))[:16]}… ({rec.get('checksum')}); licence {rec.get('licence')}")
            status.write(state="running", epoch=i + 1, epochs=len(names), progress=(i + 1) / len(names))
    except MaiError as exc:
        status.write(state="failed", error=exc.render())
        raise
    except KeyboardInterrupt:
        status.write(state="stopped", error="stopped; pull again to resume the download")
        print("stopped: run the same pull again to resume", file=sys.stderr)
        return 130
    status.write(state="finished", progress=1.0, eta_s=0.0)
    return 0


def _import(args) -> int:
    from mai_core.models.backbones import import_weights

    rec = import_weights(args.file, args.backbone, force=args.force)
    print(f"{rec['name']}: stored {rec['file']} ({_mb(rec['size'])}) from {rec['label']}; "
          f"sha256 {rec['sha256'][:16]}…; licence {rec.get('licence') or 'unknown'} (the file's own terms apply)")
    return 0


def _verify(args) -> int:
    from mai_core.models.backbones import verify_weights

    rows = verify_weights(args.names or None)
    if not rows:
        print("nothing stored yet (python -m mai_core weights pull NAME)")
        return 0
    for r in rows:
        mark = {True: "ok  ", False: "FAIL", None: "?   "}[r["ok"]]
        print(f"{mark} {r['name']}: {r['what']}")
    bad = [r for r in rows if r["ok"] is False]
    print(f"{sum(r['ok'] is True for r in rows)} ok, {len(bad)} failed, "
          f"{sum(r['ok'] is None for r in rows)} without a record")
    return 2 if bad else 0


def run(args) -> int:
    return {"list": _list, "pull": _pull, "import": _import, "verify": _verify}[args.action](args)
