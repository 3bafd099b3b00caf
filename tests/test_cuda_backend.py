"""The CUDA backend against the NumPy float64 reference, and its host-side contract.

GPU tests (marked ``gpu``) run every op of ``fastmlp.backend.cuda`` on a GPU and
compare it with ``reference.py`` (float64 to 1e-12, float32 to 1e-5, relative to
the largest reference value), and the optimizer steps with the CPU's step by step;
they skip with the reason of ``cuda_available()`` where there is no GPU. The
host-side tests run everywhere:
- the cuda package exports the names of the cpu package with the same signatures,
  module by module (backend/cpu/<family>.py and backend/cuda/<family>.py);
- get_backend("cuda") without CuPy names the extra to install;
- cuda/source.py finds every family, in a checkout and in a wheel layout;
- every launch the cuda package makes (recorded through a stand-in CuPy) passes
  arguments whose types match the kernel's C++ parameters, with a block of the
  256 threads the kernels assume, and no op synchronises with the host.
"""
import ast
import importlib
import importlib.util
import inspect
import itertools
import os
import re
import shutil
import sys
import types

import numpy as np
import pytest

from fastmlp.backend import codes, cuda_available, get_backend
from fastmlp.backend import cpu as cpu_backend
from fastmlp.backend import reference as ref
from fastmlp.backend.cuda import source as cuda_source

BACKEND_DIR = os.path.dirname(os.path.dirname(cpu_backend.__file__))
CPU_DIR = os.path.join(BACKEND_DIR, "cpu")
CUDA_DIR = os.path.join(BACKEND_DIR, "cuda")
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)
ACTS = [(codes.IDENTITY, 0.0), (codes.RELU, 0.0), (codes.LEAKY_RELU, 0.1), (codes.TANH, 0.0),
        (codes.SIGMOID, 0.0)]


def rel_err(got, want):
    """max |got - want| / max |want| (0 for empty arrays)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def assert_close(what, got, want, dtype):
    err = rel_err(got, want)
    print(f"{what} [{np.dtype(dtype).name}]: relative error {err:.2e}")
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def test_rel_err_catches_a_planted_error():
    want = np.linspace(-1.0, 1.0, 101)
    got = want.copy()
    got[17] += 1e-4
    assert rel_err(want, want) == 0.0
    with pytest.raises(AssertionError):
        assert_close("planted", got, want, np.float32)


# --- host side: the module contract ------------------------------------------------

def _public_functions_ast(path):
    """{name: ast.dump of its arguments} for the public top-level functions of a file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    return {n.name: ast.dump(n.args) for n in tree.body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def _modules(folder):
    return {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}


def _exported(package):
    """{name: value} of what a backend package exports: its ops and attributes, not its modules."""
    return {k: v for k, v in vars(package).items() if not k.startswith("_") and not inspect.ismodule(v)}


def test_each_family_module_has_the_same_ops_on_both_devices():
    # cpu/<module>.py and cuda/<module>.py define the same ops (the functions the packages
    # export), with the same parameters; a module for every kernels/<family>.cu on both sides
    shared = _modules(CPU_DIR) & _modules(CUDA_DIR)
    assert set(cuda_source.FAMILIES) | {"blas", "conv_act_pool"} <= shared
    ops = set(_exported(cpu_backend))
    for module in sorted(shared):
        cpu_fns = {k: v for k, v in _public_functions_ast(os.path.join(CPU_DIR, module + ".py")).items()
                   if k in ops}
        cuda_fns = {k: v for k, v in _public_functions_ast(os.path.join(CUDA_DIR, module + ".py")).items()
                    if k in ops}
        assert cpu_fns, f"cpu/{module}.py defines no op"
        assert sorted(cuda_fns) == sorted(cpu_fns), f"cpu/{module}.py and cuda/{module}.py differ in their ops"
        for fn, args in cpu_fns.items():
            assert cuda_fns[fn] == args, f"cuda.{module}.{fn} and cpu.{module}.{fn} differ in their arguments"


def test_cuda_exports_the_cpu_names_with_the_same_signatures(fake_cuda):
    be, _ = fake_cuda
    cpu_names, cuda_names = _exported(cpu_backend), _exported(be)
    assert sorted(cuda_names) == sorted(cpu_names)
    for k, v in cpu_names.items():
        if callable(v):
            assert inspect.signature(cuda_names[k]) == inspect.signature(v), f"cuda.{k} and cpu.{k} differ"
        else:
            assert type(cuda_names[k]) is type(v) or None in (v, cuda_names[k]), f"cuda.{k} and cpu.{k}"
    assert (cpu_backend.name, be.name) == ("cpu", "cuda")
    assert (cpu_backend.xp.__name__, be.xp.__name__) == ("numpy", "cupy")
    assert (cpu_backend.host_arrays, be.host_arrays) == (True, False)
    assert (cpu_backend.full_batch_gram, be.full_batch_gram) == (True, False)


def test_live_cuda_package_exports_the_cpu_names():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed: the stand-in CuPy test above checks the same names")
    import fastmlp.backend.cuda as cuda
    assert sorted(_exported(cuda)) == sorted(_exported(cpu_backend)) and cuda.xp.__name__ == "cupy"


def test_cuda_package_without_cupy_keeps_its_kernel_source(monkeypatch):
    # CI and the packaging checks read kernels/ through cuda/source.py where CuPy is missing
    monkeypatch.setitem(sys.modules, "cupy", None)
    name = "fastmlp.backend._cuda_without_cupy"
    spec = importlib.util.spec_from_file_location(name, os.path.join(CUDA_DIR, "__init__.py"),
                                                  submodule_search_locations=[CUDA_DIR])
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    with pytest.raises(AttributeError, match=r"needs CuPy.*fastmlp\[cuda1[23]\]"):
        mod.matmul
    src = importlib.import_module(name + ".source")
    assert src.FAMILIES == cuda_source.FAMILIES
    monkeypatch.delitem(sys.modules, name + ".source")


def test_get_backend_cuda_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # makes `import cupy` raise ImportError
    with pytest.raises(ImportError, match=r"fastmlp\[cuda1[23]\]"):
        get_backend("cuda")
    ok, why = cuda_available()
    assert not ok and "fastmlp[cuda" in why


def test_cuda_source_lists_every_family_for_float_and_double():
    d = cuda_source.kernels_dir()
    assert sorted(f[:-3] for f in os.listdir(d) if f.endswith(".cu")) == sorted(cuda_source.FAMILIES)
    for family in cuda_source.FAMILIES:
        code = cuda_source.source(family)
        assert code.lstrip().startswith("// kernels/" + family + ".cu"), "each .cu opens with its header"
        assert "reference.py" in code.split("\n\n")[0], "the header names the reference op"
        assert not re.search(r"#include\s*<", code), "NVRTC has no host headers"
        assert isinstance(cuda_source.options(family), tuple)
        exprs = cuda_source.name_expressions(family)
        assert len(set(exprs)) == len(exprs)
        for kernel, tparams, _ in _kernel_decls(family):
            mine = [e for e in exprs if e.split("<")[0] == kernel]
            assert mine, f"{family}.cu: kernel {kernel} has no name expression"
            if tparams:
                firsts = {e.split("<")[1].split(",")[0].rstrip(">") for e in mine}
                assert {"float", "double"} <= firsts, f"{kernel}: expected float and double, got {mine}"
    with pytest.raises(ValueError, match="expected a kernel family"):
        cuda_source.source("nope")


def test_cuda_source_inlines_the_shared_headers(monkeypatch, tmp_path):
    # the .cu files share kernels/*.cuh: each #include "name.cuh" line becomes the header's
    # text and a #line that gives back the .cu file's numbering; no #include is left for NVRTC
    for family in cuda_source.FAMILIES:
        code = cuda_source.source(family)
        raw = open(cuda_source.path(family), encoding="utf-8").read().splitlines()
        assert not re.search(r'^\s*#include', code, re.M)
        at = [i for i, line in enumerate(raw, 1) if line.startswith('#include "')]
        marks = list(re.finditer(rf'^#line (\d+) "{family}.cu"$', code, re.M))
        assert [int(m.group(1)) for m in marks] == [i + 1 for i in at]
        if at:
            assert code.splitlines()[:at[0] - 1] == raw[:at[0] - 1], "the file up to its first #include"
            assert code[marks[-1].end() + 1:].splitlines() == raw[at[-1]:], "the rest of the file follows"
    for family, header, marker in (
            ("dense", "activation", "T act_value("), ("conv", "activation", "T act_value("),
            ("conv", "window", "int window_argmax("), ("pool", "window", "int window_argmax("),
            ("loss", "reduce", "double block_sum("), ("norm", "channel_sums", "void channel_sums(")):
        assert cuda_source.source(family).count(marker) == 1, f"{family}.cu: {header}.cuh once"
    # a header that is not there is named in the error
    shutil.copytree(cuda_source.kernels_dir(), tmp_path / "k")
    os.remove(tmp_path / "k" / "activation.cuh")
    monkeypatch.setattr(cuda_source, "kernels_dir", lambda: str(tmp_path / "k"))
    with pytest.raises(FileNotFoundError, match="activation.cuh"):
        cuda_source.source("dense")


def test_cuda_source_finds_kernels_in_a_wheel_layout(tmp_path):
    # the wheel ships kernels/ as fastmlp/_kernels (pyproject force-include)
    site = tmp_path / "site"
    (site / "fastmlp" / "backend" / "cuda").mkdir(parents=True)
    shutil.copy(cuda_source.__file__, site / "fastmlp" / "backend" / "cuda" / "source.py")
    shutil.copytree(cuda_source.kernels_dir(), site / "fastmlp" / "_kernels")
    spec = importlib.util.spec_from_file_location("_wheel_cuda_source",
                                                  site / "fastmlp" / "backend" / "cuda" / "source.py")
    wheel_src = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheel_src)
    assert wheel_src.kernels_dir() == str(site / "fastmlp" / "_kernels")
    assert wheel_src.source("dense") == cuda_source.source("dense")
    shutil.rmtree(site / "fastmlp" / "_kernels")
    with pytest.raises(FileNotFoundError, match="dense.cu"):
        wheel_src.kernels_dir()


# --- host side: every launch, recorded through a stand-in CuPy -----------------------

_KERNEL_RE = re.compile(r"(?:template\s*<([^>]*)>\s*)?__global__\s+void\s+(\w+)\s*\(([^)]*)\)", re.S)


def _kernel_decls(family):
    """[(kernel, template parameter names, [parameter types])] parsed from the .cu source."""
    out = []
    for tparams, kernel, params in _KERNEL_RE.findall(cuda_source.source(family)):
        tnames = [t.split()[-1] for t in tparams.split(",")] if tparams.strip() else []
        ptypes = [re.match(r"^(.*?)\s*\w+$", " ".join(p.split())).group(1) for p in params.split(",")]
        out.append((kernel, tnames, ptypes))
    return out


def _param_types(family, expression):
    """The C++ parameter types of one instantiation: "mse<float>" -> ["float*", ...]."""
    kernel, _, targs = expression.partition("<")
    targs = [a.strip() for a in targs.rstrip(">").split(",")] if targs else []
    for name, tnames, ptypes in _kernel_decls(family):
        if name == kernel:
            subst = dict(zip(tnames, targs))
            return [re.sub(r"\b(\w+)\b", lambda m: subst.get(m.group(1), m.group(1)), t) for t in ptypes]
    raise AssertionError(f"{expression} is not a kernel of {family}.cu")


_POINTEE = {"float": np.dtype(np.float32), "double": np.dtype(np.float64),
            "int": np.dtype(np.int32), "long long": np.dtype(np.int64)}
_SCALAR = {"long long": np.int64, "int": np.int32, "double": np.float64}


def _check_arg(ctype, arg):
    ctype = ctype.replace("const ", "").strip()
    if ctype.endswith("*"):
        if arg is None:
            return True       # NULL: only for buffers the kernel leaves alone (sgd buf without momentum)
        base = ctype[:-1].strip()
        if not isinstance(arg, np.ndarray):
            return False
        if base in _POINTEE:
            return arg.dtype == _POINTEE[base]
        widths = {"unsigned char": 1, "unsigned short": 2, "unsigned int": 4, "unsigned long long": 8}
        return arg.dtype.itemsize == widths[base]
    return type(arg) is _SCALAR[ctype]


class _FakeCupy(types.ModuleType):
    """Just enough of CuPy for the cuda package, with NumPy arrays standing in for device arrays."""

    def __init__(self):
        super().__init__("cupy")
        self.launches, self.host_syncs, self.modules = [], [], []
        fake = self

        class RawModule:
            def __init__(self, *, code, options, name_expressions):
                self.code, self.options, self.name_expressions = code, options, name_expressions
                fake.modules.append(self)

            def get_function(self, expression):
                assert expression in self.name_expressions, f"{expression}: not a name expression"
                family = next(f for f in cuda_source.FAMILIES if cuda_source.source(f) == self.code)

                def launch(grid, block, args, **kw):
                    fake.launches.append((family, expression, grid, block, args, kw))
                return launch

        self.RawModule = RawModule
        self.float64 = np.float64
        self.empty = lambda shape, dtype=np.float64: np.empty(shape, dtype=dtype)
        self.zeros = lambda shape, dtype=np.float64: np.zeros(shape, dtype=dtype)
        self.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype)
        self.ascontiguousarray = np.ascontiguousarray
        self.matmul = np.matmul
        self.ndarray = type("DeviceArray", (), {})  # nothing here is one: GEMMs go to matmul
        self.asnumpy = lambda a: (self.host_syncs.append("asnumpy"), np.asarray(a))[1]
        stream = types.SimpleNamespace(ptr=0, synchronize=lambda: self.host_syncs.append("stream"))
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1),
            get_current_stream=lambda: stream,
            Stream=lambda non_blocking=False: types.SimpleNamespace(ptr=1),
            Device=lambda *a: types.SimpleNamespace(
                synchronize=lambda: self.host_syncs.append("device")))


_fake_loads = itertools.count()
_FAKE_PREFIX = "fastmlp.backend._cuda_on_fake_cupy_"


def load_cuda_backend(monkeypatch, fake):
    """The cuda package loaded afresh against the stand-in CuPy ``fake``, under a private name
    (the real one, if any, is untouched): its modules import ``fake`` as cupy. The modules of
    an earlier load leave sys.modules here."""
    for key in [k for k in sys.modules if k.startswith(_FAKE_PREFIX)]:
        del sys.modules[key]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    name = f"{_FAKE_PREFIX}{next(_fake_loads)}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(CUDA_DIR, "__init__.py"),
                                                  submodule_search_locations=[CUDA_DIR])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_cuda(monkeypatch):
    """The cuda package loaded against a stand-in CuPy."""
    fake = _FakeCupy()
    return load_cuda_backend(monkeypatch, fake), fake


def _run_every_op(be, dtype, idx_dtype, n, m):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    be.bias_act_forward(f(n, m), f(m), codes.TANH, 0.0)
    be.act_backward_bias_grad(f(n, m), f(m), f(n, m), f(n, m), codes.RELU, 0.0)
    be.act_forward(f(n, m, 3), f(n, m, 3), codes.SIGMOID, 0.0)
    be.act_backward(f(n, 2), f(n, 2), f(n, 2), codes.LEAKY_RELU, 0.2)
    be.softmax_forward(f(n, m), f(n, m))
    stats = np.zeros(2)
    be.softmax_xent(f(n, m), stats, f(n, m), rng.integers(0, m, n).astype(idx_dtype), 1.0 / max(n, 1))
    be.bce_logits(f(n, m), stats, f(n, m), (f(n, m) > 0).astype(dtype), 0.5)
    be.mse(f(n, m), stats, f(n, m), f(n, m), 0.5)
    w = np.abs(f(n)).astype(np.float64)
    be.softmax_xent_weighted(f(n, m), stats, f(n, m), rng.integers(0, m, n).astype(idx_dtype), w, 1.0 / max(n, 1))
    be.bce_logits_weighted(f(n, m), stats, f(n, m), (f(n, m) > 0).astype(dtype), w, 0.5)
    be.mse_weighted(f(n, m), stats, f(n, m), f(n, m), w, 0.5)
    p = 3 * m + 5
    seg = (np.array([0, m, 3 * m], dtype=np.int64), np.array([m, 3 * m, p], dtype=np.int64),
           np.array([0.0, 1e-3, 0.0]), np.array([0.1, 0.0, 0.0]))
    bad = np.zeros(1, dtype=idx_dtype)
    be.sgd_update(f(p), f(p), f(p), bad, f(p), *seg, 0.1, 0.9, True)
    be.sgd_update(f(p), f(p), None, bad, f(p), *seg, 0.1, 0.0, False)
    be.adam_update(f(p), f(p), f(p), np.abs(f(p)), bad, f(p), *seg, 1e-3, 0.9, 0.999, 1e-8,
                   np.array([3], np.int64))
    be.add_reg_grad(f(p), f(p), *seg)
    be.reg_penalty(np.zeros(1), f(p), *seg)
    factor, lr = np.ones(3), np.array([0.1])
    be.grad_clip_factors(factor, f(p), f(p), *seg, 1.0, True)
    be.sgd_step(f(p), f(p), f(p), bad, f(p), *seg, factor, lr, np.inf, 0.01, 0.9, True)
    be.adam_step(f(p), f(p), f(p), np.abs(f(p)), bad, f(p), *seg, factor, lr, 0.5, 0.01, True, 0.9, 0.999,
                 1e-8, np.array([3], np.int64))
    be.rmsprop_step(f(p), f(p), np.abs(f(p)), f(p), f(p), bad, f(p), *seg, factor, lr, np.inf, 0.0, 0.99,
                    1e-8, 0.9, True)
    be.gather_rows(f(n, 2, 3), f(n + 4, 2, 3), rng.integers(0, n + 4, n).astype(idx_dtype))
    be.gather_rows(np.empty(n, np.int64), np.arange(n + 4), rng.integers(0, n + 4, n).astype(idx_dtype))
    be.gather_rows(np.empty((n, 5), np.uint8), np.zeros((n + 4, 5), np.uint8),
                   rng.integers(0, n + 4, n).astype(idx_dtype))
    be.augment_images(f(n, 3 * m), f(n, 3 * m), np.zeros((n, 6)), 3, m, 1, 1, 0)
    # images (N, C, H, W) = (n, 2, 5, 4); a 3x2 kernel, stride 1, padding 1 -> OH, OW = 5, 5
    x = f(n, 2, 5, 4)
    be.im2col(f(12, n * 25), x, 3, 2, 1, 1)
    be.col2im(f(n, 2, 5, 4), f(12, n * 25), 3, 2, 1, 1)
    be.conv_bias_forward(f(n, 3, 5, 5), f(3, n * 25), f(3))
    be.conv_bias_backward(f(3, n * 25), f(3), f(n, 3, 5, 5))
    argmax = np.zeros((n, 2, 2, 2), np.int32)
    be.maxpool_forward(f(n, 2, 2, 2), argmax, x, 2, 2)
    be.maxpool_backward(f(n, 2, 5, 4), f(n, 2, 2, 2), argmax, 2, 2)
    be.avgpool_forward(f(n, 2, 2, 2), x, 2, 2)
    be.avgpool_backward(f(n, 2, 5, 4), f(n, 2, 2, 2), 2, 2)
    be.global_avgpool_forward(f(n, 2), x)
    be.global_avgpool_backward(f(n, 2, 5, 4), f(n, 2))
    be.global_maxpool_forward(f(n, 2), np.zeros((n, 2), np.int32), x)
    be.global_maxpool_backward(f(n, 2, 5, 4), f(n, 2), np.zeros((n, 2), np.int32))
    c64 = lambda: np.ones(2)  # noqa: E731
    for training in (True, False):
        be.batchnorm_forward(f(n, 2, 5, 4), c64(), c64(), c64(), c64(), x, f(2), f(2), 0.9, 1e-5,
                             training)
        be.batchnorm_backward(f(n, 2, 5, 4), f(2), f(2), f(n, 2, 5, 4), x, c64(), c64(), f(2),
                              training)
    mask = np.abs(f(n, 7))
    be.dropout_forward(f(n, 7), mask, f(n, 7), 0.25)
    be.dropout_backward(f(n, 7), f(n, 7), mask)


def _launch_problems(launches):
    """What is wrong with recorded launches: argument types against the kernel's C++
    parameters, and the launch shape (the kernels assume 256-thread blocks)."""
    problems = []
    for family, expression, grid, block, args, kw in launches:
        ptypes = _param_types(family, expression)
        if len(args) != len(ptypes):
            problems.append(f"{expression}: {len(args)} arguments for {ptypes}")
        for i, (t, a) in enumerate(zip(ptypes, args)):
            if not _check_arg(t, a):
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                problems.append(f"{expression}: argument {i} is {got}, the kernel takes {t}")
        if kw:
            problems.append(f"{expression}: unexpected launch options {kw}")
        if not all(isinstance(d, int) and d >= 1 for d in grid + block):
            problems.append(f"{expression}: grid {grid} block {block}")
        elif np.prod(block) != 256:
            problems.append(f"{expression}: block {block}, the kernels assume 256 threads")
        elif not (grid[0] < 2**31 and all(d <= 65535 for d in grid[1:])):
            problems.append(f"{expression}: grid {grid} out of range")
    return problems


@pytest.mark.parametrize("n, m", [(1, 1), (7, 5), (2053, 33), (300, 4099)])
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_launch_matches_its_kernel_signature(fake_cuda, dtype, idx_dtype, n, m):
    be, fake = fake_cuda
    _run_every_op(be, dtype, idx_dtype, n, m)
    assert not fake.host_syncs, f"ops synchronised with the host: {fake.host_syncs}"
    for mod in fake.modules:
        family = next(f for f in cuda_source.FAMILIES if cuda_source.source(f) == mod.code)
        assert mod.options == cuda_source.options(family)
        assert tuple(mod.name_expressions) == cuda_source.name_expressions(family)
    # the conv family has its own launch test (tests/test_conv.py)
    families = [f for f in cuda_source.FAMILIES if f != "conv"]
    loaded = {next(f for f in cuda_source.FAMILIES if cuda_source.source(f) == m.code) for m in fake.modules}
    assert len(fake.modules) == len(loaded) and set(families) <= loaded  # each family compiled once
    assert not _launch_problems(fake.launches), "\n".join(_launch_problems(fake.launches))
    seen = {expression.split("<")[0] for _, expression, *_ in fake.launches}
    expected = {e.split("<")[0] for f in families for e in cuda_source.name_expressions(f)}
    assert expected <= seen, f"kernels never launched: {expected - seen}"


def test_launch_check_catches_planted_mistakes():
    x = np.zeros(3, np.float32)
    good = ("dense", "act_forward<float>", (1,), (256,),
            (x, x, np.int64(3), np.int32(1), np.float64(0.0)), {})
    assert _launch_problems([good]) == []
    planted = [
        good[:4] + (good[4][:3] + (np.int64(1),) + good[4][4:], {}),                  # int64 where int
        good[:4] + ((np.zeros(3, np.float64),) + good[4][1:], {}),                   # double* for float*
        good[:4] + (good[4][:4], {}),                                                # an argument short
        good[:3] + ((128,), good[4], {}),                                            # 128 threads
        ("dense", "act_forward<float>", (0,), (256,), good[4], {}),                  # empty grid
    ]
    for launch in planted:
        assert _launch_problems([launch]), f"not caught: {launch[2:4]} {launch[4]}"


def test_reductions_pass_their_partial_sums_along(fake_cuda):
    be, fake = fake_cuda
    rng = np.random.default_rng(1)
    n, m = 5000, 20
    dz, da, a = (rng.standard_normal((n, m)) for _ in range(3))
    db = np.zeros(m)
    be.act_backward_bias_grad(dz, db, da, a, codes.RELU, 0.0)
    (_, e1, grid1, block1, args1, _), (_, e2, grid2, _, args2, _) = fake.launches
    assert (e1, e2) == ("act_backward_bias_grad<double>", "bias_grad_reduce<double>")
    g = grid1[1]
    assert args1[1] is not None and args1[1].size >= g * m and args2[1] is args1[1]
    assert int(args2[2]) == g and grid2 == (m,) and grid1[0] * block1[0] >= m
    fake.launches.clear()
    stats = np.zeros(2)
    be.mse(np.zeros((n, 3)), stats, np.zeros((n, 3)), np.zeros((n, 3)), 1.0)
    (_, _, grid1, _, args1, _), (_, e2, grid2, _, args2, _) = fake.launches
    assert e2 == "loss_stats_finish" and grid2 == (1,)
    assert args2[0] is stats and args2[1] is args1[1] and int(args2[2]) == grid1[0]
    assert args1[1].size >= 2 * grid1[0] and float(args2[3]) == 3.0 and float(args2[4]) == 1.0


class _DeviceArray:
    """A stand-in device array whose copies are recorded: (destination, source, bytes, stream)."""

    def __init__(self, a, log):
        self.a, self.shape, self.dtype, self.flags, self.nbytes = a, a.shape, a.dtype, a.flags, a.nbytes
        self.data = types.SimpleNamespace(copy_from_device_async=lambda src, size, stream=None: log.append(
            (self, src, size, stream)))


def test_device_attributes_and_copy(fake_cuda):
    # what a model asks a backend instead of branching on its name
    be, fake = fake_cuda
    log = []
    out, a = _DeviceArray(np.zeros(5, np.int64), log), _DeviceArray(np.arange(5), log)
    be.copy(out, a)
    assert log == [(out, a.data, 40, fake.cuda.get_current_stream())] and not fake.host_syncs
    with pytest.raises(ValueError, match="shape"):
        be.copy(out, _DeviceArray(np.arange(4), log))
    with pytest.raises(ValueError, match="dtype"):
        be.copy(out, _DeviceArray(np.arange(5.0), log))
    assert be.reduction_scratch_nbytes(33) == 0 and be.threads() == 1
    be.use_numba_thread_gemms(True)               # nothing to choose on the GPU
    assert be.numba_thread_gemms() is False
    assert be.conv_chunk_bytes is None and be.fused_conv_chunks is False
    assert type(be.step_graphs()).__name__ == "StepGraphs" and be.step_graphs() is not be.step_graphs()


def test_bad_inputs_are_refused_before_any_launch(fake_cuda):
    be, fake = fake_cuda
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="float64"):
        be.bias_act_forward(z, np.zeros(3, np.float64), codes.RELU, 0.0)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        be.bias_act_forward(z, np.zeros(4, np.float32), codes.RELU, 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.act_forward(np.zeros((3, 4), np.float32).T, z, codes.RELU, 0.0)
    with pytest.raises(TypeError, match="labels"):
        be.softmax_xent(z, np.zeros(2), z, np.zeros(4, np.float32), 1.0)
    with pytest.raises(TypeError, match="stats"):
        be.mse(z, np.zeros(2, np.float32), z, z, 1.0)
    with pytest.raises(TypeError, match="seg_start"):
        be.add_reg_grad(np.zeros(5), np.zeros(5), np.array([0], np.int32), np.array([5], np.int64),
                        np.zeros(1), np.zeros(1))
    assert not fake.launches


# --- GPU: every op against the reference ---------------------------------------------

@pytest.fixture(scope="module")
def cuda():
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no usable CUDA GPU: {why}")
    return get_backend("cuda")


def _rand(rng, shape, dtype, zeros=0.0):
    x = rng.standard_normal(shape).astype(dtype)
    if zeros:
        x[rng.random(shape) < zeros] = 0   # exact zeros exercise the ReLU/LeakyReLU subgradients
    return x


SHAPES = [(1, 1), (7, 3), (131, 33), (2053, 5), (1000, 257)]


@pytest.mark.gpu
@pytest.mark.parametrize("code, alpha", ACTS)
@pytest.mark.parametrize("n, m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_forward(cuda, dtype, n, m, code, alpha):
    rng = np.random.default_rng(n * 1000 + m)
    z, b = _rand(rng, (n, m), dtype, 0.1), _rand(rng, (m,), dtype)
    want = z.astype(np.float64)
    ref.bias_act_forward(want, b.astype(np.float64), code, alpha)
    zd = cuda.to_device(z)
    cuda.bias_act_forward(zd, cuda.to_device(b), code, alpha)
    assert_close(f"bias_act_forward code={code}", cuda.to_host(zd), want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("code, alpha", ACTS)
@pytest.mark.parametrize("n, m", SHAPES + [(4099, 1), (3, 4096), (20000, 20)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward_bias_grad(cuda, dtype, n, m, code, alpha):
    rng = np.random.default_rng(n * 7 + m)
    a = ref.act(_rand(rng, (n, m), np.float64, 0.1), code, alpha).astype(dtype)
    da = _rand(rng, (n, m), dtype)
    dz_want, db_want = np.empty((n, m)), np.empty(m)
    ref.act_backward_bias_grad(dz_want, db_want, da.astype(np.float64), a.astype(np.float64),
                               code, alpha)
    dz, db = cuda.empty((n, m), dtype), cuda.empty((m,), dtype)
    ad, dad = cuda.to_device(a), cuda.to_device(da)
    cuda.act_backward_bias_grad(dz, db, dad, ad, code, alpha)
    assert_close(f"act_backward_bias_grad dz code={code}", cuda.to_host(dz), dz_want, dtype)
    assert_close(f"act_backward_bias_grad db code={code}", cuda.to_host(db), db_want, dtype)
    first = cuda.to_host(db).copy()
    cuda.act_backward_bias_grad(dz, db, dad, ad, code, alpha)
    assert np.array_equal(cuda.to_host(db), first), "the bias gradient is not reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("code, alpha", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_forward_and_backward(cuda, dtype, code, alpha):
    rng = np.random.default_rng(code)
    x = _rand(rng, (3, 5, 7, 11), dtype, 0.1)
    y_want = np.empty(x.shape)
    ref.act_forward(y_want, x.astype(np.float64), code, alpha)
    xd = cuda.to_device(x)
    yd = cuda.empty(x.shape, dtype)
    cuda.act_forward(yd, xd, code, alpha)
    assert_close(f"act_forward code={code}", cuda.to_host(yd), y_want, dtype)
    cuda.act_forward(xd, xd, code, alpha)   # in place
    assert np.array_equal(cuda.to_host(xd), cuda.to_host(yd))
    y = cuda.to_host(yd)
    dy = _rand(rng, x.shape, dtype)
    dx_want = np.empty(x.shape)
    ref.act_backward(dx_want, dy.astype(np.float64), y.astype(np.float64), code, alpha)
    dxd = cuda.empty(x.shape, dtype)
    cuda.act_backward(dxd, cuda.to_device(dy), yd, code, alpha)
    assert_close(f"act_backward code={code}", cuda.to_host(dxd), dx_want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n, c", [(1, 1), (5, 3), (131, 10), (2053, 1000), (3000, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_forward(cuda, dtype, n, c):
    logits = (3 * _rand(np.random.default_rng(c), (n, c), dtype))
    want = np.empty((n, c))
    ref.softmax_forward(want, logits.astype(np.float64))
    p = cuda.empty((n, c), dtype)
    cuda.softmax_forward(p, cuda.to_device(logits))
    assert_close("softmax_forward", cuda.to_host(p), want, dtype)


def _check_stats(what, got, want, dtype):
    assert_close(f"{what} loss sum", got[0], want[0], dtype)
    assert got[1] == pytest.approx(want[1], rel=1e-12), f"{what} correct count {got[1]} != {want[1]}"


@pytest.mark.gpu
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("n, c", [(1, 1), (5, 3), (131, 10), (2053, 1000), (9000, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent(cuda, dtype, n, c, label_dtype):
    rng = np.random.default_rng(n + c)
    logits = 3 * _rand(rng, (n, c), dtype)
    labels = rng.integers(0, c, n).astype(label_dtype)
    scale = 1.0 / n
    d_want, s_want = np.empty((n, c)), np.array([1.5, 2.0])
    ref.softmax_xent(d_want, s_want, logits.astype(np.float64), labels, scale)
    d, stats = cuda.empty((n, c), dtype), cuda.to_device(np.array([1.5, 2.0]))
    ld, lab = cuda.to_device(logits), cuda.to_device(labels)
    cuda.softmax_xent(d, stats, ld, lab, scale)
    assert_close("softmax_xent dlogits", cuda.to_host(d), d_want, dtype)
    _check_stats("softmax_xent", cuda.to_host(stats), s_want, dtype)
    again = [cuda.zeros((2,), np.float64) for _ in range(2)]
    for s in again:
        cuda.softmax_xent(d, s, ld, lab, scale)
    assert np.array_equal(cuda.to_host(again[0]), cuda.to_host(again[1])), "loss sums not reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(1, 1), (7, 1), (209, 1), (131, 3), (50000, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_logits(cuda, dtype, n, k):
    rng = np.random.default_rng(n * k)
    logits = 4 * _rand(rng, (n, k), dtype)
    targets = (rng.random((n, k)) < 0.5).astype(dtype)
    d_want, s_want = np.empty((n, k)), np.array([0.25, 1.0])
    ref.bce_logits(d_want, s_want, logits.astype(np.float64), targets.astype(np.float64), 1.0 / n)
    d, stats = cuda.empty((n, k), dtype), cuda.to_device(np.array([0.25, 1.0]))
    cuda.bce_logits(d, stats, cuda.to_device(logits), cuda.to_device(targets), 1.0 / n)
    assert_close("bce_logits dlogits", cuda.to_host(d), d_want, dtype)
    _check_stats("bce_logits", cuda.to_host(stats), s_want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n, m", [(1, 1), (7, 1), (131, 4), (2053, 10), (40000, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse(cuda, dtype, n, m):
    rng = np.random.default_rng(n + 3 * m)
    out, targets = _rand(rng, (n, m), dtype), _rand(rng, (n, m), dtype)
    d_want, s_want = np.empty((n, m)), np.zeros(2)
    ref.mse(d_want, s_want, out.astype(np.float64), targets.astype(np.float64), 0.5)
    d, stats = cuda.empty((n, m), dtype), cuda.zeros((2,), np.float64)
    cuda.mse(d, stats, cuda.to_device(out), cuda.to_device(targets), 0.5)
    assert_close("mse dout", cuda.to_host(d), d_want, dtype)
    _check_stats("mse", cuda.to_host(stats), s_want, dtype)


def _segments(p, cover_all):
    # (start, stop, l1, l2) of a few segments with mixed L1/L2, one of them empty;
    # cover_all=False leaves elements outside every segment (at both ends and between
    # the first two, like the alignment padding of params.py)
    cuts = [0, p // 5, p // 2, p // 2, p - 3 if p > 3 else p, p]
    if not cover_all:
        cuts = [1] + cuts[1:-1] + [max(p - 2, 1)]
    start, stop = np.array(cuts[:-1], dtype=np.int64), np.array(cuts[1:], dtype=np.int64)
    if not cover_all and stop[0] - start[0] > 1:
        stop[0] -= 1
    s = len(start)
    l1 = np.array([1e-2, 0.0, 0.5, 0.0, 3e-3][:s])
    l2 = np.array([0.0, 1e-2, 0.1, 0.0, 2e-2][:s])
    return start, stop, l1, l2


def _opt_inputs(rng, p, dtype, planted_bad):
    params = _rand(rng, (p,), dtype, 0.05)  # exact zeros: sign(0) = 0 in the L1 term
    grads = _rand(rng, (p,), dtype)
    if planted_bad:
        grads[p // 3] = np.inf
        grads[p // 2] = np.nan
    return params, grads


@pytest.mark.gpu
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("p, cover_all, planted_bad", [(1, True, False), (1001, True, False),
                                                       (70001, False, False), (5003, True, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(cuda, dtype, p, cover_all, planted_bad, bad_dtype, momentum, nesterov):
    rng = np.random.default_rng(p)
    params, grads = _opt_inputs(rng, p, dtype, planted_bad)
    buf = _rand(rng, (p,), dtype)
    seg = _segments(p, cover_all)
    want = {"params": params.astype(np.float64), "prev": np.zeros(p), "buf": buf.astype(np.float64)}
    bad_want = np.array([2], dtype=bad_dtype)
    for _ in range(2):   # two steps: the momentum buffer carries over
        with np.errstate(invalid="ignore", over="ignore"):   # the planted inf / nan
            ref.sgd_update(want["params"], want["prev"], want["buf"], bad_want,
                           grads.astype(np.float64), *seg, 0.1, momentum, nesterov)
    got = {"params": cuda.to_device(params), "prev": cuda.zeros((p,), dtype), "buf": cuda.to_device(buf)}
    bad = cuda.to_device(np.array([2], dtype=bad_dtype))
    segd = [cuda.to_device(s) for s in seg]
    for _ in range(2):
        cuda.sgd_update(got["params"], got["prev"], got["buf"], bad, cuda.to_device(grads), *segd,
                        0.1, momentum, nesterov)
    finite = np.isfinite(want["params"])
    for k in want:
        g = cuda.to_host(got[k]).astype(np.float64)
        assert np.array_equal(np.isfinite(g), np.isfinite(want[k])), f"sgd {k}: non-finite differ"
        assert_close(f"sgd_update {k}", g[finite], want[k][finite], dtype)
    assert int(cuda.to_host(bad)[0]) == int(bad_want[0])


@pytest.mark.gpu
@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("p, cover_all, planted_bad", [(1, True, False), (1001, True, False),
                                                       (70001, False, False), (5003, True, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update(cuda, dtype, p, cover_all, planted_bad, bad_dtype):
    rng = np.random.default_rng(p + 1)
    params, grads = _opt_inputs(rng, p, dtype, planted_bad)
    seg = _segments(p, cover_all)
    hyper = (0.1, 0.9, 0.999, 1e-8)
    want = {"params": params.astype(np.float64), "prev": np.zeros(p), "m": np.zeros(p), "v": np.zeros(p)}
    bad_want = np.zeros(1, dtype=bad_dtype)
    got = {"params": cuda.to_device(params), "prev": cuda.zeros((p,), dtype),
           "m": cuda.zeros((p,), dtype), "v": cuda.zeros((p,), dtype)}
    bad = cuda.zeros((1,), bad_dtype)
    segd = [cuda.to_device(s) for s in seg]
    for step in (1, 2, 3):
        g = grads * step if not planted_bad else grads
        with np.errstate(invalid="ignore", over="ignore"):   # the planted inf / nan
            ref.adam_update(want["params"], want["prev"], want["m"], want["v"], bad_want,
                            g.astype(np.float64), *seg, *hyper, np.array([step], np.int64))
        cuda.adam_update(got["params"], got["prev"], got["m"], got["v"], bad,
                         cuda.to_device(g.astype(dtype)), *segd, *hyper,
                         cuda.to_device(np.array([step], np.int64)))
    finite = np.isfinite(want["params"])
    for k in want:
        g = cuda.to_host(got[k]).astype(np.float64)
        assert np.array_equal(np.isfinite(g), np.isfinite(want[k])), f"adam {k}: non-finite differ"
        keep = finite & np.isfinite(want[k])
        assert_close(f"adam_update {k}", g[keep], want[k][keep], dtype)
    assert int(cuda.to_host(bad)[0]) == int(bad_want[0])


@pytest.mark.gpu
@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_match_the_cpu_step_by_step(cuda, dtype, opt):
    # the twins compute the same arithmetic (kernels/optim.cu, cpu/optim.py): in the parameter
    # dtype, one rounding per operation in the same order, no fma. Each step starts both from
    # the CPU's state; they agree to the last bit, but for the last bit of pow in Adam's bias
    # corrections (double, CUDA's against the C library's)
    rng = np.random.default_rng(11)
    p = 70001
    seg = _segments(p, True)
    segd = [cuda.to_device(s) for s in seg]
    params = _rand(rng, (p,), dtype, 0.05)
    state = [np.zeros(p, dtype), np.zeros(p, dtype)]           # buf, or m and v
    differ = 0
    for t in range(1, 6):
        grads = _rand(rng, (p,), dtype)
        got = [cuda.to_device(a) for a in [params] + state]
        gd, prev, bad = cuda.to_device(grads), cuda.empty((p,), dtype), cuda.zeros((1,), np.int64)
        cpu_prev, cpu_bad = np.empty(p, dtype), np.zeros(1, np.int64)
        if opt == "adam":
            hyper = (1e-3, 0.9, 0.999, 1e-8)
            cuda.adam_update(got[0], prev, got[1], got[2], bad, gd, *segd, *hyper,
                             cuda.to_device(np.array([t], np.int64)))
            cpu_backend.adam_update(params, cpu_prev, *state, cpu_bad, grads, *seg, *hyper, np.array([t]))
        else:
            momentum, nesterov = {"sgd": (0.0, False), "momentum": (0.9, False), "nesterov": (0.8, True)}[opt]
            cuda.sgd_update(got[0], prev, got[1], bad, gd, *segd, 0.05, momentum, nesterov)
            cpu_backend.sgd_update(params, cpu_prev, state[0], cpu_bad, grads, *seg, 0.05, momentum, nesterov)
            got = got[:2]
        for what, g, want in zip(("params", "state", "state"), got, [params] + state):
            g = cuda.to_host(g)
            differ += np.count_nonzero(g != want)
            np.testing.assert_array_max_ulp(g, want, maxulp=1 if opt == "adam" else 0,
                                            err_msg=f"{opt} {what} step {t}")
        assert int(cuda.to_host(bad)[0]) == int(cpu_bad[0]) == 0
    print(f"{opt} {np.dtype(dtype).name}: {differ} elements differ from the CPU's (by one ulp) over 5 steps")


@pytest.mark.gpu
@pytest.mark.parametrize("p, cover_all", [(1, True), (1001, True), (70001, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_reg_grad(cuda, dtype, p, cover_all):
    rng = np.random.default_rng(p + 2)
    params, grads = _opt_inputs(rng, p, dtype, False)
    seg = _segments(p, cover_all)
    want = grads.astype(np.float64)
    ref.add_reg_grad(want, params.astype(np.float64), *seg)
    gd = cuda.to_device(grads)
    cuda.add_reg_grad(gd, cuda.to_device(params), *[cuda.to_device(s) for s in seg])
    assert_close("add_reg_grad", cuda.to_host(gd), want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("p, cover_all", [(1, True), (1001, True), (70001, False), (2_000_003, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reg_penalty(cuda, dtype, p, cover_all):
    rng = np.random.default_rng(p + 3)
    params = _rand(rng, (p,), dtype, 0.05)
    seg = _segments(p, cover_all)
    want = np.array([123.0])
    ref.reg_penalty(want, params.astype(np.float64), *seg)
    out = cuda.to_device(np.array([123.0]))   # assigned, not added into
    pd, segd = cuda.to_device(params), [cuda.to_device(s) for s in seg]
    cuda.reg_penalty(out, pd, *segd)
    assert_close("reg_penalty", cuda.to_host(out), want, dtype)
    first = cuda.to_host(out).copy()
    cuda.reg_penalty(out, pd, *segd)
    assert np.array_equal(cuda.to_host(out), first), "the penalty is not reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint8, np.float16])
@pytest.mark.parametrize("shape, b", [((1, 1), 1), ((50, 3, 5, 5), 17), ((1000, 12288), 209),
                                      ((9, 7), 0)])
def test_gather_rows(cuda, dtype, idx_dtype, shape, b):
    rng = np.random.default_rng(b)
    x = np.abs(100 * rng.standard_normal(shape)).astype(dtype)
    idx = rng.integers(0, shape[0], b).astype(idx_dtype)
    want = np.empty((b,) + shape[1:], dtype)
    ref.gather_rows(want, x, idx)
    out = cuda.empty((b,) + shape[1:], dtype)
    cuda.gather_rows(out, cuda.to_device(x), cuda.to_device(idx))
    assert np.array_equal(cuda.to_host(out), want)   # a gather moves bits: exact


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m,k,n", [(37, 19, 23), (1, 5, 1), (64, 1, 3), (3, 300, 2)])
def test_direct_cublas_gemm_every_layout(cuda, dtype, ta, tb, m, k, n):
    """cuda/blas.py's gemm (cuBLAS through ctypes) against NumPy float64 for C-contiguous
    and transposed operands, and the strided views it hands back to cupy.matmul."""
    from fastmlp.backend.cuda import blas as cuda_blas
    rng = np.random.default_rng(m * 100 + k)
    a = _rand(rng, (k, m) if ta else (m, k), dtype)
    b = _rand(rng, (n, k) if tb else (k, n), dtype)
    A, B = cuda.to_device(a), cuda.to_device(b)
    A, B = (A.T if ta else A), (B.T if tb else B)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    out = cuda.to_device(np.full((m, n), np.nan, dtype))   # poisoned: every element must be written
    assert cuda_blas.gemm(out, A, B)
    assert_close("gemm", cuda.to_host(out), want, dtype if dtype == np.float64 else np.float32)
    wide = cuda.to_device(_rand(rng, (m, 2 * k), dtype))[:, ::2]   # strided: not for cuBLAS directly
    assert not cuda_blas.gemm(out, wide, B)
    cuda.matmul(out, wide, B)                                       # ... but matmul still does it
    want = cuda.to_host(wide).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    assert_close("strided", cuda.to_host(out), want, dtype if dtype == np.float64 else np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_and_transfers(cuda, dtype):
    rng = np.random.default_rng(5)
    a, b = _rand(rng, (37, 19), dtype), _rand(rng, (37, 23), dtype)
    ad, bd = cuda.to_device(a), cuda.to_device(b)
    assert cuda.to_device(ad) is ad   # already a C-contiguous device array of that dtype: no copy
    out = cuda.empty((19, 23), dtype)
    cuda.matmul(out, ad.T, bd)        # transposed views, as Dense backward passes them
    cuda.synchronize()
    assert_close("matmul", cuda.to_host(out), a.astype(np.float64).T @ b.astype(np.float64),
                 dtype if dtype == np.float64 else np.float32)
    t = cuda.to_device(np.asfortranarray(a), dtype=np.float64)
    assert t.flags.c_contiguous and t.dtype == np.float64
    assert isinstance(cuda.to_host(t), np.ndarray)
