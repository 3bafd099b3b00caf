"""What the peers runner prints and writes: tables for people, a JSON file
with every figure, and the closing key=value line for machines."""
import json
import os
import sys
from pathlib import Path

import numpy as np

IMPL_ORDER = ("fastmlp", "numpy", "torch")


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def core_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def blas_name():
    # NumPy >= 2 reports its BLAS as a dict; older ones only print it
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return blas.get("openblas configuration") or f"{blas['name']} {blas['version']}"
    except Exception:
        return "unknown"


def print_header(info, skipped):
    print(f"peers runner: python {info['python']}, numpy {info['numpy']} ({info['blas']}), "
          f"torch {info.get('torch', '-')}, fastmlp {info.get('fastmlp', '-')}")
    print(f"machine: {info['cpu']}, {info['cores']} cores; threads {info['threads']}; "
          f"device {info['device']}{'; quick' if info['quick'] else ''}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            print(f"note: {var}={os.environ[var]} is set; it may slow NumPy's BLAS")
    for name, why in skipped.items():
        print(f"{name}: {why}")
    print_load(info["cores"])


def print_load(cores):
    """Warn when other processes compete for the cores: a BLAS thread that
    loses its core stalls the whole GEMM, so timings swing by tens of times."""
    load = os.getloadavg()[0]
    if load > 0.5 * cores:
        print(f"note: load average {load:.1f} on {cores} cores: other processes are running; "
              f"multi-threaded timings are unreliable until they stop")
    return load


def print_check(w, check):
    print(f"\ncheck: one SGD step of {w.arch} ({w.loss}, lr {w.lr}) on {check['n']} samples "
          f"from the same weights vs {check.get('reference', 'NumPy float64')} (loss "
          f"{check['ref_loss']:.6f}; tolerance {check['tol']:g} on loss and weights)")
    for name, r in check["results"].items():
        if "error" in r:
            print(f"  {name:14s} FAILED: {r['error']}")
            continue
        verdict = "ok" if r["ok"] else "FAILED"
        print(f"  {name:14s} loss {r['loss_rel']:.1e}  weights {r['weights_rel']:.1e}  "
              f"update {r['update_rel']:.1e}  {verdict}")


def print_workload(result):
    r = result
    batch = "full" if r["batch_size"] is None else r["batch_size"]
    print(f"\n{r['key']}: {r['title']}; {r.get('arch', r['sizes'])}, {r['loss']}, lr {r['lr']}, "
          f"batch {batch}")
    print(f"  {r['flops_per_step'] / 1e6:.1f} MFLOP/step, {r['flops_per_sample'] / 1e6:.3f} "
          f"MFLOP/sample; {r['steps']} steps ({r['epochs']} epoch(s) of {r['n']}) x {r['reps']} "
          f"timed runs, medians")
    print(f"  {'impl':8s} {'ms/step':>9s} {'samples/s':>11s} {'GFLOP/s':>8s} {'% peak':>7s}"
          f" {'fastmlp speed-up':>17s}")
    for name in IMPL_ORDER:
        if name in r["impls"]:
            f = r["impls"][name]
            up = r["speedup"].get(name)
            up = f"{up:.2f}x" if up is not None else "-"
            print(f"  {name:8s} {f['ms_per_step']:9.3f} {f['samples_per_s']:11,.0f} "
                  f"{f['gflops']:8.1f} {100 * f['frac_peak']:6.1f}% {up:>17s}")
        elif name in r["errors"]:
            print(f"  {name:8s} FAILED: {r['errors'][name]}")
    bad = [n for n, c in r["check"]["results"].items() if not c["ok"]]
    if bad:
        print(f"  warning: one-step check failed for {', '.join(bad)}")
    if "profile" in r:
        print_profile(r["profile"], "as it runs")
    if "profile_ops" in r:
        print_profile(r["profile_ops"], "the chunked conv kernels off, every op timed")
    sys.stdout.flush()


def print_profile(prof, how):
    """Where a fastmlp CNN step goes, by kind of op (every op wrapped with a timer)."""
    print(f"  fastmlp step by op kind ({how}; a profiled epoch, {prof['step_ms']:.2f} ms/step with the timers):")
    for k, ms in sorted(prof["ms_per_step"].items(), key=lambda kv: -kv[1]):
        if ms > 0:
            print(f"    {k:24s} {ms:8.3f} ms {100 * prof['share'][k]:6.1f}%")
    sh = prof["share"]
    if sh["im2col"] + sh["col2im"] > 0:
        print(f"    im2col + col2im {100 * (sh['im2col'] + sh['col2im']):.1f}% against GEMM "
              f"{100 * sh['gemm']:.1f}% of the step")


def print_summary(results):
    print("\nsummary (ms per step; speed-up = peer time / fastmlp time)")
    print(f"  {'workload':10s} {'fastmlp':>9s} {'numpy':>9s} {'torch':>9s} "
          f"{'vs numpy':>9s} {'vs torch':>9s}")
    for r in results:
        ms = [r["impls"][n]["ms_per_step"] if n in r["impls"] else None for n in IMPL_ORDER]
        ups = [r["speedup"].get(n) for n in ("numpy", "torch")]
        cells = [f"{m:9.3f}" if m is not None else f"{'-':>9s}" for m in ms]
        cells += [f"{u:8.2f}x" if u is not None else f"{'-':>9s}" for u in ups]
        print(f"  {r['key']:10s} " + " ".join(cells))


def write_json(path, info, results):
    # written to a temporary name first: a failed run leaves no half file
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"info": info, "workloads": results}, indent=1, default=str))
    tmp.replace(path)


def key_values(results, peak_gflops, threads):
    """The closing machine-readable line: key=value pairs separated by spaces."""
    pairs = [("peak_gflops", f"{peak_gflops:.1f}"), ("threads", threads)]
    for r in results:
        k = r["key"]
        for name in IMPL_ORDER:
            if name in r["impls"]:
                pairs.append((f"{k}_{name}_ms", f"{r['impls'][name]['ms_per_step']:.4g}"))
        for name, up in r["speedup"].items():
            pairs.append((f"{k}_vs_{name}", f"{up:.2f}"))
        if "fastmlp" in r["impls"]:
            pairs.append((f"{k}_frac_peak", f"{r['impls']['fastmlp']['frac_peak']:.3f}"))
        for name in ("im2col", "col2im", "gemm"):
            if "profile_ops" in r:
                pairs.append((f"{k}_{name}_share", f"{r['profile_ops']['share'][name]:.3f}"))
        if "profile" in r and "conv chunked kernels" in r["profile"]["share"]:
            pairs.append((f"{k}_conv_kernels_share", f"{r['profile']['share']['conv chunked kernels']:.3f}"))
    checks = [c["ok"] for r in results for c in r["check"]["results"].values()]
    pairs.append(("check", "ok" if all(checks) else "fail"))
    return " ".join(f"{k}={v}" for k, v in pairs)
