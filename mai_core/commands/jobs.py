"""``python -m mai_core jobs``: list, stop and resume background training jobs."""

from __future__ import annotations

NAME = "jobs"
HELP = "list, stop or resume background training jobs"
DESCRIPTION = (
    "Background training jobs (started from the app's sidebar or with `jobs start`). "
    "One job runs per device at a time; further ones wait in a queue that advances on its own."
)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("list", help="show every job with its state, progress and error")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p = sub.add_parser("stop", help="stop a running job (checkpoint kept) or remove a queued one from the queue")
    p.add_argument("job", help="job id (= run name)")
    p.add_argument("--force", action="store_true", help="kill at once (SIGKILL; no final checkpoint)")
    p.add_argument("--wait", type=float, default=30.0, metavar="S", help="seconds to wait for it to end (default 30)")
    p = sub.add_parser("resume", help="continue a stopped or failed job from its last checkpoint")
    p.add_argument("job", help="job id (= run name)")
    p = sub.add_parser("start", help="queue a training job (arguments after -- go to `train`)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--name", default="", help="run name (default: backbone + time)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("train_args", nargs="*", help="further `train` options, after --")
    p = sub.add_parser("wait", help="wait until a job is no longer queued or running")
    p.add_argument("job")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    p = sub.add_parser("forget", help="remove an ended job from the list (its run directory stays)")
    p.add_argument("job")
    p = sub.add_parser("run-queue", help="(internal) run the queued jobs of one device, then exit")
    p.add_argument("--device", required=True)


def _fmt_eta(s) -> str:
    if s is None:
        return ""
    s = int(round(float(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(args) -> int:
    import json

    from mai_core.runs import jobs

    if args.action == "run-queue":
        from mai_core.runs.queue import run_queue

        run_queue(args.device)
        return 0
    if args.action == "list":
        infos = jobs.list_jobs()
        if args.json:
            for j in infos:
                print(json.dumps({**j.as_row(), "run_dir": str(j.run_dir)}))
            return 0
        if not infos:
            print("no jobs")
            return 0
        print(f"{'job':<32} {'state':<9} {'device':<7} {'epoch':>7} {'progress':>8} {'eta':>7} {'best PCC':>8}")
        for j in infos:
            pcc = "" if j.best_val_gene_pcc is None else f"{j.best_val_gene_pcc:.4f}"
            state = j.state + (f" #{j.queue_position}" if j.queue_position else "")
            print(f"{j.id:<32} {state:<9} {j.device:<7} {(j.epoch or 0):>3}/{(j.epochs or '?')!s:<3} "
                  f"{j.progress:>8.0%} {_fmt_eta(j.eta_s if j.state == 'running' else None):>7} {pcc:>8}")
            if j.error and j.state == "failed":
                for ln in j.error.splitlines():
                    print(f"    {ln}")
        return 0
    if args.action == "stop":
        info = jobs.stop(args.job, force=args.force, wait_s=args.wait)
        print(f"{info.id}: {info.state}" + (" (resumable)" if info.resumable else ""))
        return 0
    if args.action == "resume":
        info = jobs.resume(args.job)
        print(f"{info.id}: {info.state}" + (f" (position {info.queue_position})" if info.queue_position else ""))
        return 0
    if args.action == "start":
        spec = jobs.TrainSpec(data=args.data, name=args.name, device=args.device, extra=list(args.train_args))
        info = jobs.submit(spec)
        print(f"{info.id}: {info.state} on {info.device} -> {info.run_dir}")
        return 0
    if args.action == "wait":
        info = jobs.wait(args.job, timeout_s=args.timeout)
        print(f"{info.id}: {info.state}" + (f"\n{info.error}" if info.error else ""))
        return 0 if info.state == "finished" else 1
    if args.action == "forget":
        jobs.forget(args.job)
        print(f"{args.job}: removed from the job list")
        return 0
    return 2
