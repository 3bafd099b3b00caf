"""The wheel ships kernels/ and works outside the source tree."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{r.stdout}\n{r.stderr}")
    return next(out.glob("fastmlp-*.whl"))


def test_wheel_contains_kernels(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    kernels = sorted(n for n in names if n.startswith("fastmlp/_kernels/"))
    print(kernels)
    assert "fastmlp/_kernels/README.md" in kernels
    for cu in sorted(p.name for p in (ROOT / "kernels").glob("*.cu")):
        assert f"fastmlp/_kernels/{cu}" in kernels


def test_wheel_works_outside_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import fastmlp, numpy as np, pathlib;"
            "assert 'site' in fastmlp.__file__, fastmlp.__file__;"
            "m = fastmlp.Sequential([fastmlp.Dense(3, 4), fastmlp.ReLU(), fastmlp.Dense(4, 1)],"
            " loss=fastmlp.BinaryCrossEntropy(), seed=0);"
            "h = m.fit(np.random.rand(16, 3), np.arange(16) % 2, epochs=2, batch_size=4);"
            "assert len(h['loss']) == 2;"
            "print('ok', fastmlp.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    # the kernels are found in the installed wheel, with or without CuPy
    r = subprocess.run([sys.executable, "-c", "from fastmlp.backend.cuda import source as c; "
                        "p = c.kernels_dir(); print(p); assert 'site' in str(p); c.source('conv')"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _extra_requirements(extras, name, seen=None):
    """The requirement names of extra ``name``, its self-references (fastmlp[a,b]) followed."""
    import re
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out = set()
    for req in extras[name]:
        m = re.match(r"fastmlp\[([^\]]+)\]", req)
        if m:
            for inner in m.group(1).split(","):
                out |= _extra_requirements(extras, inner.strip(), seen)
        else:
            out.add(re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower())
    return out


def test_dev_extra_pulls_no_cuda_wheels_and_includes_docs():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dev = _extra_requirements(extras, "dev")
    print(sorted(dev))
    cuda = sorted(r for r in dev if r.startswith(("cuda", "nvidia", "cupy")))
    assert not cuda, f"the dev extra pulls CUDA wheels {cuda}; they belong in kernels-check or cuda12/13"
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= dev
    assert {"cuda-bindings", "nvidia-cuda-nvrtc"} <= _extra_requirements(extras, "kernels-check")
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev,kernels-check]"' in ci           # CI still compiles with NVRTC
