"""Every kernels/*.cu compiles, without a GPU, the way the CUDA backend compiles it.

(a) NVRTC, through the ``cuda-bindings`` package and the ``nvidia-cuda-nvrtc``
    wheel (``pip install "fastmlp[kernels-check]"``): the source, options and
    name expressions of ``fastmlp.backend.cuda.source``, the exact inputs of
    the backend's ``cupy.RawModule``, for compute_80 and compute_90. Skips with
    the reason and the extra to install when cuda-bindings or libnvrtc is
    missing (the ``dev`` extra leaves these CUDA wheels out; CI installs
    ``kernels-check`` beside it); fails when they are there and a kernel does
    not compile.
(b) ``nvcc --ptx`` for sm_80 and sm_90 with warnings as errors, on a unit that
    instantiates the same name expressions (``cuda_source.nvcc_unit``), where
    nvcc is on PATH.
(c) The activation codes of kernels/activation.cuh are those of fastmlp/backend/codes.py.
"""
import ctypes
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastmlp.backend import codes
from fastmlp.backend.cuda import source as cuda_source

ARCHS = (80, 90)
FAMILIES = cuda_source.FAMILIES
# What cupy.RawModule appends to our options before NVRTC sees them (CuPy 13/14,
# cupy/cuda/compiler.py), besides the -arch of the device.
CUPY_ADDS = ("-ftz=true", "--device-as-default-execution-space")


# --- NVRTC helper ----------------------------------------------------------------

def _nvrtc():
    """The cuda.bindings nvrtc module with libnvrtc loaded, or skip if cuda-bindings is missing."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        pytest.skip(f"cuda-bindings is not installed ({e}); "
                    'pip install "fastmlp[kernels-check]" to compile the kernels with NVRTC')
    try:
        nvrtc.nvrtcVersion()
    except Exception:  # libnvrtc not found by cuda.pathfinder: preload the pip wheel's copy
        _preload_wheel_nvrtc()
        nvrtc.nvrtcVersion()  # a second failure is a real error: the test fails with it
    return nvrtc


def _preload_wheel_nvrtc():
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec else []
    libs = sorted(p for r in roots for p in glob.glob(os.path.join(r, "cu*", "lib", "libnvrtc.so.*"))
                  + glob.glob(os.path.join(r, "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    if not libs:
        pytest.skip(f"cuda-bindings is installed but no libnvrtc was found (looked under {roots}); "
                    'pip install "fastmlp[kernels-check]" to compile the kernels with NVRTC')
    ctypes.CDLL(libs[-1], mode=ctypes.RTLD_GLOBAL)


def _check(nvrtc, result):
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC call failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return rest[0] if len(rest) == 1 else rest


def nvrtc_compile(nvrtc, code, filename, options, name_expressions, arch):
    """Compile as cupy.RawModule does. Returns (ok, log, {expression: lowered name}, ptx)."""
    prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(code.encode(), filename.encode(), 0, [], []))
    try:
        for e in name_expressions:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, e.encode()))
        opts = [o.encode() for o in options] + [f"--gpu-architecture=compute_{arch}".encode()]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog))
        # a fresh buffer NVRTC may write into: b" " * 1 would be CPython's shared
        # one-byte object, and NVRTC's NUL would corrupt b" " for the whole process
        log = bytes(bytearray(size))
        _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log))
        log = log.rstrip(b"\x00").decode(errors="replace")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, log, {}, ""
        lowered = {e: _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, e.encode())).decode()
                   for e in name_expressions}
        size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog))
        ptx = bytes(bytearray(size))
        _check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx))
        return True, log, lowered, ptx.rstrip(b"\x00").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _compile_family(nvrtc, family, arch):
    return nvrtc_compile(nvrtc, cuda_source.source(family), family + ".cu",
                         cuda_source.options(family) + CUPY_ADDS,
                         cuda_source.name_expressions(family), arch)


def _entries(ptx):
    """{mangled kernel name: its PTX body} for every .entry of a PTX module."""
    parts = re.split(r"^\.(?:visible|weak) \.entry ", ptx, flags=re.M)[1:]
    return {p.split("(", 1)[0].strip(): p for p in parts}


# --- (a) NVRTC -------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_nvrtc_compiles_family(family, arch):
    nvrtc = _nvrtc()
    ok, log, lowered, ptx = _compile_family(nvrtc, family, arch)
    assert ok, f"NVRTC failed on kernels/{family}.cu for compute_{arch}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings on kernels/{family}.cu:\n{log}"
    entries = _entries(ptx)
    for expression in cuda_source.name_expressions(family):
        name = lowered.get(expression)
        assert name, f"no lowered name for {expression!r} in kernels/{family}.cu"
        assert name in entries, f"{expression!r} (lowered {name}) has no .entry in the PTX"
    print(f"{family}.cu compute_{arch}: {len(lowered)} kernels")


@pytest.mark.parametrize("kernel", ["bias_act_forward", "act_forward", "act_backward"])
def test_float_hot_path_has_no_double_arithmetic(kernel):
    # The float32 forward/backward of every Dense layer must not fall back to
    # double math (1/64 rate on consumer GPUs); only alpha arrives as a double.
    nvrtc = _nvrtc()
    ok, log, lowered, ptx = _compile_family(nvrtc, "dense", 80)
    assert ok, log
    body = _entries(ptx)[lowered[cuda_source.expr(kernel, "float")]]
    f64_math = re.findall(r"^\s*(?:add|sub|mul|fma|div|sqrt|rcp|ex2|lg2|tanh|min|max)\.\S*f64.*$",
                          body, flags=re.M)
    assert not f64_math, f"{kernel}<float> does double arithmetic:\n" + "\n".join(f64_math)


def test_nvrtc_helper_reports_a_planted_syntax_error():
    # the check above can fail: a copy of a real source with one broken statement does not compile
    nvrtc = _nvrtc()
    code = cuda_source.source("dense")
    broken = code.replace("dz[e] = g;", "dz[e] = g", 1)
    assert broken != code, "the planted edit no longer applies; plant another one"
    ok, log, lowered, _ = nvrtc_compile(nvrtc, broken, "dense_broken.cu", cuda_source.options("dense"),
                                        cuda_source.name_expressions("dense"), 80)
    print(log)
    assert not ok and "error" in log.lower() and not lowered


def test_nvrtc_helper_reports_a_missing_instantiation():
    # a name expression the source cannot instantiate fails too (a renamed kernel)
    nvrtc = _nvrtc()
    ok, log, _, _ = nvrtc_compile(nvrtc, cuda_source.source("data"), "data.cu",
                                  cuda_source.options("data"), ["gather_rows_renamed<float, int>"], 80)
    print(log)
    assert not ok


def test_nvrtc_check_skips_with_the_extra_when_cuda_bindings_is_missing(monkeypatch):
    # the dev extra has no CUDA wheels: the NVRTC tests must skip, naming the extra, not fail
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    with pytest.raises(pytest.skip.Exception, match=r"fastmlp\[kernels-check\]") as info:
        _nvrtc()
    print(info.value)


def test_nvrtc_check_skips_with_the_extra_when_libnvrtc_is_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)   # no nvidia.* wheel
    with pytest.raises(pytest.skip.Exception, match=r"no libnvrtc.*fastmlp\[kernels-check\]") as info:
        _preload_wheel_nvrtc()
    print(info.value)


# --- (b) nvcc ----------------------------------------------------------------------

def _nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH; the nvcc --ptx check of kernels/*.cu "
                    "runs where a CUDA toolkit is installed")
    return nvcc


def nvcc_ptx(nvcc, family, unit_path, arch, out_path):
    cmd = [nvcc, "--ptx", f"-arch=sm_{arch}", *cuda_source.options(family),
           "-Werror", "all-warnings", "-o", str(out_path), str(unit_path)]
    return subprocess.run(cmd, capture_output=True, text=True), cmd


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_nvcc_compiles_family(family, arch, tmp_path):
    nvcc = _nvcc()
    unit = tmp_path / f"{family}.cu"   # same line numbers as kernels/<family>.cu
    unit.write_text(cuda_source.nvcc_unit(family))
    out = tmp_path / f"{family}.sm_{arch}.ptx"
    proc, cmd = nvcc_ptx(nvcc, family, unit, arch, out)
    assert proc.returncode == 0, (f"nvcc failed on kernels/{family}.cu for sm_{arch}:\n"
                                  f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    n = len(_entries(out.read_text()))
    assert n == len(cuda_source.name_expressions(family)), \
        f"nvcc emitted {n} kernels, cuda_source lists {len(cuda_source.name_expressions(family))}"


def test_nvcc_check_reports_a_planted_warning(tmp_path):
    # warnings are errors: an unused variable fails the nvcc check
    nvcc = _nvcc()
    unit = tmp_path / "data.cu"
    unit.write_text(cuda_source.nvcc_unit("data").replace(
        "const long long r = e / f;", "const long long r = e / f; int unused_here = 0;", 1))
    proc, _ = nvcc_ptx(nvcc, "data", unit, 80, tmp_path / "data.ptx")
    print(proc.stderr)
    assert proc.returncode != 0


def test_ci_nvcc_script_runs():
    script = os.path.join(os.path.dirname(cuda_source.kernels_dir()), ".ci", "nvcc_check.sh")
    if not os.path.isfile(script):
        pytest.skip(".ci/nvcc_check.sh is not in this tree (an installed wheel)")
    proc = subprocess.run(["bash", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0
    if shutil.which("nvcc"):
        assert proc.stdout.count(": ok") == len(FAMILIES) * len(ARCHS)
    else:
        assert "skipping" in proc.stdout


# --- (c) the codes both sides share ---------------------------------------------------

def test_activation_header_defines_the_codes_of_codes_py():
    header = open(os.path.join(cuda_source.kernels_dir(), "activation.cuh"), encoding="utf-8").read()
    defines = {name: int(value) for name, value in re.findall(r"^#define FASTMLP_(\w+) (\d+)\s*$", header, re.M)}
    print(defines)
    assert defines == {name.upper(): code for name, code in codes.ACTIVATION_CODES.items()}
    assert defines == {k: getattr(codes, k) for k in ("IDENTITY", "RELU", "LEAKY_RELU", "TANH", "SIGMOID")}
