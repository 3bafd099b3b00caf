"""What the peers runner prints and writes: tables for people, a JSON file
with every figure, and the closing key=value line for machines."""
import json
import os
import sys
from pathlib import Path

import numpy as np

IMPL_ORDER = ("fastmlp", "numpy", "torch", "torch.compile", "jax", "torch-cudagraph")


def key_name(impl):
    """An implementation's name in the key=value line: torch.compile -> torch_compile."""
    return impl.replace(".", "_").replace("-", "_")


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
    how = (f"{r['rounds']} rounds, each implementation in its own process, medians of the rounds"
           if "rounds" in r else f"{r['reps']} timed runs, medians")
    print(f"  {r['flops_per_step'] / 1e6:.1f} MFLOP/step, {r['flops_per_sample'] / 1e6:.3f} "
          f"MFLOP/sample; {r['steps']} steps ({r['epochs']} epoch(s) of {r['n']}) x {how}")
    print(f"  {'impl':15s} {'ms/step':>9s} {'samples/s':>11s} {'GFLOP/s':>8s} {'% peak':>7s}"
          f" {'x floor':>8s} {'fastmlp speed-up':>17s}")
    for name in IMPL_ORDER:
        if name in r["impls"]:
            f = r["impls"][name]
            up = r["speedup"].get(name)
            up = f"{up:.2f}x" if up is not None else "-"
            xf = f"{f['x_floor']:.2f}x" if "x_floor" in f else "-"
            print(f"  {name:15s} {f['ms_per_step']:9.3f} {f['samples_per_s']:11,.0f} "
                  f"{f['gflops']:8.1f} {100 * f['frac_peak']:6.1f}% {xf:>8s} {up:>17s}")
        elif name in r["errors"]:
            print(f"  {name:15s} FAILED: {r['errors'][name]}")
    if "floor" in r:
        f = r["floor"]
        where = (f"best of {len(f['variants'])} thread counts: {f['threads']}"
                 if f["threads"] else "torch.matmul")
        each = ", ".join(f"{n.partition('@')[2] or n} {v['ms_per_step']:.3f}"
                         for n, v in f["variants"].items())
        print(f"  {'GEMM floor':15s} {f['ms_per_step']:9.3f} {f['samples_per_s']:11,.0f} "
              f"{f['gflops']:8.1f} {100 * f['frac_peak']:6.1f}%    1.00x   ({where}; ms/step "
              f"by threads: {each})")
    if "best_peer" in r:
        print(f"  fastmlp vs the fastest peer ({r['best_peer']}): {r['vs_best_peer']:.2f}x")
    if "torch_compile_graphs" in r:
        print(f"  torch.compile: {r['torch_compile_graphs']} so far in the process that timed it "
              f"(the backward and zero_grad run between compiled graphs)")
    for name, err in r["errors"].items():
        if name not in IMPL_ORDER:
            print(f"  {name:15s} FAILED: {err}")
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
    shown = [n for n in IMPL_ORDER if any(n in r["impls"] for r in results)]
    print("\nsummary (ms per step; speed-up = peer time / fastmlp time; x floor = fastmlp time / "
          "the GEMM floor's)")
    print(f"  {'workload':10s} " + " ".join(f"{n:>13s}" for n in shown) +
          f" {'GEMM floor':>10s} {'x floor':>8s} {'vs numpy':>9s} {'vs torch':>9s} {'vs best peer':>19s}")
    dash = "-"
    for r in results:
        cells = [f"{r['impls'][n]['ms_per_step']:13.3f}" if n in r["impls"] else f"{dash:>13s}"
                 for n in shown]
        cells.append(f"{r['floor']['ms_per_step']:10.3f}" if "floor" in r else f"{dash:>10s}")
        xf = r["impls"].get("fastmlp", {}).get("x_floor")
        cells.append(f"{xf:7.2f}x" if xf is not None else f"{dash:>8s}")
        for n in ("numpy", "torch"):
            u = r["speedup"].get(n)
            cells.append(f"{u:8.2f}x" if u is not None else f"{dash:>9s}")
        best = (f"{r['vs_best_peer']:.2f}x ({r['best_peer']})" if "best_peer" in r else dash)
        cells.append(f"{best:>19s}")
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
                pairs.append((f"{k}_{key_name(name)}_ms", f"{r['impls'][name]['ms_per_step']:.4g}"))
        if "floor" in r:
            pairs.append((f"{k}_floor_ms", f"{r['floor']['ms_per_step']:.4g}"))
        for name, up in r["speedup"].items():
            pairs.append((f"{k}_vs_{name if name == 'fastmlp-plain' else key_name(name)}",
                          f"{up:.2f}"))
        if "best_peer" in r:
            pairs.append((f"{k}_vs_best_peer", f"{r['vs_best_peer']:.2f}"))
            pairs.append((f"{k}_best_peer", key_name(r["best_peer"])))
        if "fastmlp" in r["impls"]:
            pairs.append((f"{k}_frac_peak", f"{r['impls']['fastmlp']['frac_peak']:.3f}"))
            if "x_floor" in r["impls"]["fastmlp"]:
                pairs.append((f"{k}_fastmlp_floor_ratio", f"{r['impls']['fastmlp']['x_floor']:.3f}"))
        for name in ("im2col", "col2im", "gemm"):
            if "profile_ops" in r:
                pairs.append((f"{k}_{name}_share", f"{r['profile_ops']['share'][name]:.3f}"))
        if "profile" in r and "conv chunked kernels" in r["profile"]["share"]:
            pairs.append((f"{k}_conv_kernels_share", f"{r['profile']['share']['conv chunked kernels']:.3f}"))
    checks = [c["ok"] for r in results for c in r["check"]["results"].values()]
    pairs.append(("check", "ok" if all(checks) else "fail"))
    return " ".join(f"{k}={v}" for k, v in pairs)
