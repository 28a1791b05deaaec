"""python -m mai_core backbones: list the backbone registry and where each one's weights would come from."""

from __future__ import annotations

NAME = "backbones"
HELP = "list registered backbones and which weights each would load offline"


def add_arguments(p) -> None:
    p.add_argument("--cpu", action="store_true", help="only CPU-friendly backbones")


def run(args) -> int:
    from mai_core.models.backbones import list_backbones, plan_weights
    from mai_core.errors import MaiError

    specs = list_backbones(cpu_friendly=True if args.cpu else None)
    rows = []
    for s in specs:
        try:
            source, path = plan_weights(s.name)
        except MaiError:
            source, path = "random", None
        label = {"random": "RANDOM INIT (no weights on this machine)"}.get(source, source)
        rows.append((s.name, s.family, "yes" if s.cpu_friendly else "", label, path or ""))
    widths = [max(len(r[i]) for r in rows + [("name", "family", "cpu", "weights", "path")]) for i in range(4)]
    header = ("name", "family", "cpu", "weights")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  path")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return 0
