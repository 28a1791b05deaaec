"""python -m mai_core backbones: list the backbone registry, where each one's weights would come from, and
under which licence."""

from __future__ import annotations

NAME = "backbones"
HELP = "list registered backbones, which weights each would load here, and their licences"


def add_arguments(p) -> None:
    p.add_argument("--cpu", action="store_true", help="only CPU-friendly backbones")
    p.add_argument("--pathology", action="store_true", help="only pathology encoders")


def run(args) -> int:
    from mai_core.errors import MaiError
    from mai_core.models.backbones import list_backbones, plan_weights, weight_status

    specs = list_backbones(cpu_friendly=True if args.cpu else None)
    if args.pathology:
        specs = [s for s in specs if s.kind == "pathology"]
    rows = []
    for s in specs:
        try:
            source, path = plan_weights(s.name)
        except MaiError:
            source, path = "random", None
        label = {"random": "RANDOM INIT (no weights on this machine)",
                 "hub": "hub (downloaded on first use)"}.get(source, source)
        st = weight_status(s.name)
        rows.append((s.name, s.family, "yes" if s.cpu_friendly else "", label, st.licence or "unknown",
                     "gated" if st.gated else "", path or ""))
    header = ("name", "family", "cpu", "weights", "licence", "access", "path")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(6)]
    for r in [header] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:6], widths)) + "  " + r[6])
    print("\nLicences are the weights' own (timm's pretrained_cfg or the model card): cc-by-nc-* and 'other' "
          "forbid commercial use. `python -m mai_core weights list` shows sizes and sources; "
          "`weights pull NAME` fetches them.")
    return 0
