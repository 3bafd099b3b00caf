"""`peers.py --isolate`: each implementation in its own process.

One round starts `peers.py --only IMPL --json FILE` (with the parent's
options and sgemm peak, so that every process plans the same steps) for each
implementation in turn, fastmlp, numpy, torch, torch.compile, jax (on a GPU
torch-cudagraph) and the GEMM floor, the order rotated by one each round;
`--rounds` rounds. Each process checks its implementation's first step, warms
up and takes --reps timed runs; its median is one round's figure, and the
figures reported are the medians over the rounds. An implementation that one
process reports as skipped is not started again.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import flops
import peer_report
from peer_runner import ONLY, Context, compare, figures, impl_device, machine_info, \
    measure_peaks, plan_of

PEERS_PY = Path(__file__).resolve().parent / "peers.py"


def child_command(args, name, peaks, out):
    cmd = [sys.executable, str(PEERS_PY), "--only", name, "--json", str(out),
           "--workload", ",".join(args.workloads), "--threads", str(args.threads),
           "--device", args.device, "--peak", repr(peaks["cpu"])]
    if "cuda" in peaks:
        cmd += ["--gpu-peak", repr(peaks["cuda"])]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--reps", str(args.reps)] if args.reps else []
    cmd += ["--data", str(args.data)] if args.data else []
    cmd += ["--tf32"] if getattr(args, "tf32", False) else []
    return cmd


def run_child(args, name, peaks, folder, round_no):
    """Run one implementation's process; returns its JSON, or None (the reason printed)."""
    out = Path(folder) / f"{name}-{round_no}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(child_command(args, name, peaks, out), capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        print(f"  round {round_no}: {name} FAILED (exit {proc.returncode}, {took:.0f} s):")
        for line in tail:
            print(f"    {line}")
        return None
    print(f"  round {round_no}: {name} ({took:.0f} s)")
    sys.stdout.flush()
    return json.loads(out.read_text())


def merge(runs, peaks, device):
    """One result per workload from the children's JSON: each implementation's
    (and floor variant's) per-round medians, their median, checks and errors."""
    results = {}
    for run in runs:                                   # in round order
        for r in run["workloads"]:
            res = results.setdefault(r["key"], {k: v for k, v in r.items() if k not in (
                "impls", "floor", "speedup", "best_peer", "vs_best_peer", "check", "errors",
                "times", "profile", "profile_ops", "torch_compile_graphs")} |
                {"per_round": {}, "errors": {}, "check": dict(r["check"], results={})})
            for k in ("profile", "profile_ops", "torch_compile_graphs"):
                if k in r:
                    res[k] = r[k]
            timed = dict(r["impls"]) | r.get("floor", {}).get("variants", {})
            for name, f in timed.items():
                res["per_round"].setdefault(name, []).append(f["median_s"])
            res["errors"].update(r["errors"])
            for name, c in r["check"]["results"].items():
                res["check"]["results"].setdefault(name, c)
    out = []
    for res in results.values():
        w = SimpleNamespace(flops_per_sample=res["flops_per_sample"], samples=res["samples"],
                            steps=res["steps"])
        impls = {name: figures(w, secs, peaks.get(impl_device(name, device), float("nan")))
                 for name, secs in res["per_round"].items()}
        out.append(compare(res, impls))
    return out


def run_isolated(args):
    plan = plan_of(args)
    ctx = Context(None, None, args.device, {}, threads=args.threads)
    info = machine_info(args, ctx) | {"isolate": True, "rounds": args.rounds}
    peer_report.print_header(info, {})
    torch = None
    if args.device == "cuda":   # the GPU peak, measured once here for every child
        from torch_peer import load_torch
        torch, _ = load_torch(args.threads)
    peaks, peak_runs = measure_peaks(args, plan, torch)
    names = [n for n in ONLY if n != "torch-cudagraph" or args.device == "cuda"]
    print(f"--isolate: {len(names)} implementations, each in its own process, {args.rounds} "
          f"round(s): {', '.join(names)}")
    skipped, runs = {}, []
    with tempfile.TemporaryDirectory(prefix="peers-isolate-") as folder:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                if name in skipped:
                    continue
                run = run_child(args, name, peaks, folder, round_no)
                if run is None:
                    skipped[name] = "skipped: its process failed (see above)"
                    continue
                why = {n: w for n, w in run["info"]["skipped"].items() if n in ONLY[name]}
                if name in why:
                    skipped[name] = why[name]
                    print(f"    {name}: {why[name]}")
                if run["workloads"]:
                    runs.append(run)
                for k in ("torch", "jax", "fastmlp"):
                    if k in run["info"]:
                        info[k] = run["info"][k]
    results = merge(runs, peaks, args.device)
    for r in results:
        r["rounds"] = args.rounds
    print(f"FLOP count: {flops.COUNT_RULE}")
    for name, why in skipped.items():
        print(f"{name}: {why}")
    printed = set()
    for r in results:
        arch = (str(r["arch"]), r["loss"], r["lr"], r["batch_size"] is None)
        if arch not in printed:   # one check per network, as in one process
            printed.add(arch)
            peer_report.print_check(SimpleNamespace(arch=r["arch"], loss=r["loss"], lr=r["lr"]),
                                    r["check"])
        peer_report.print_workload(r)
    peer_report.print_summary(results)
    info["load_average_end"] = peer_report.print_load(info["cores"])
    if args.json:
        peer_report.write_json(args.json, info | {"peaks_gflops": peaks,
                                                  "peak_runs_gflops": peak_runs,
                                                  "skipped": skipped}, results)
        print(f"wrote {args.json}")
    print(peer_report.key_values(results, peaks["cpu"], args.threads))
    return 0
