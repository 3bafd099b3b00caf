"""The documentation site builds strictly, and the code of its guides runs as written.

(a) ``mkdocs build --strict`` (the ``docs`` extra): a broken link, a missing page or a
    docstring mkdocstrings cannot render fails it.
(b) Every fenced ``python`` block of README.md, docs/getting-started.md and docs/guides/*.md
    runs (the Keras-habit and PyTorch-habit scripts of the training guide among them). The
    blocks of one page run in order in one namespace, in a fresh folder beside a ``shared``
    link to the project's data folder, so the pages' ``../shared/data/...`` paths work and
    the files they write land in a temporary folder. A block right after the line
    ``<!-- docs-test: skip (reason) -->`` is shown but not run (a GPU-only block, say); the
    reason must be given.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", DOCS / "getting-started.md"] + sorted((DOCS / "guides").glob("*.md"))
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>[^)]+)\) -->\s*$")
# the public modules with a page of their own in the API reference (docs/api/<module>.md)
API_MODULES = ("layers", "conv", "pooling", "normalization", "losses", "optimizers", "schedules", "callbacks",
               "data", "preprocessing", "augment", "plot", "gradcheck", "sklearn", "export_onnx", "distributed",
               "sweep")
# a page whose code holds one of these strings needs that module (from that extra): it is
# skipped with the reason where the module is missing
NEEDS = {"import plot": ("matplotlib", "plot"), "fastmlp.plot": ("matplotlib", "plot"),
         "sklearn": ("sklearn", "sklearn"), "onnx": ("onnxruntime", "onnx"),
         "load_image_folder": ("PIL", "images")}
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """[(line number, code, skip reason or None)] of the ```python blocks of a page."""
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append((line, m.group(1), skip.group("reason") if skip else None))
    return blocks


# --- the block extraction itself ---------------------------------------------------

def test_python_blocks_finds_code_and_skip_markers():
    page = ("text\n```python\na = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\n"
            "b = 2\n```\n```bash\nls\n```\n")
    assert python_blocks(page) == [(2, "a = 1\n", None), (7, "b = 2\n", "needs a GPU")]


def test_skip_marker_needs_a_reason():
    page = "<!-- docs-test: skip -->\n```python\nb = 2\n```\n"
    assert python_blocks(page) == [(2, "b = 2\n", None)]    # no reason: the block runs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_page_has_code_that_runs(page):
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    assert any(skip is None for _, _, skip in blocks), f"{page}: no python block is run"


# --- (b) the pages' code ------------------------------------------------------------

def run_page(page):
    """Run the page's blocks in order in one namespace (in the current folder)."""
    namespace = {"__name__": "__docs__"}
    ran = skipped = 0
    for line, code, skip in python_blocks(page.read_text(encoding="utf-8")):
        if skip is not None:
            print(f"{page.name}:{line}: skipped ({skip})")
            skipped += 1
            continue
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        ran += 1
    print(f"{page.name}: {ran} blocks run, {skipped} skipped")
    return namespace


@pytest.fixture
def docs_workdir(tmp_path, monkeypatch):
    """A fresh folder beside a ``shared`` link to the data folder's parent (when it exists)."""
    work = tmp_path / "work"
    work.mkdir()
    env = os.environ.get("FASTMLP_DATA")
    data = Path(env) if env else ROOT.parent / "shared" / "data"
    if data.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(data.resolve(), target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return work


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_code_runs(page, docs_workdir):
    text = page.read_text(encoding="utf-8")
    if "../shared/data" in text and not (docs_workdir.parent / "shared" / "data").is_dir():
        pytest.skip(f"{page.name} reads ../shared/data, which is not here (set FASTMLP_DATA)")
    code = "".join(c for _, c, skip in python_blocks(text) if skip is None)
    for needle, (module, extra) in NEEDS.items():
        if needle in code:
            pytest.importorskip(module, reason=f'{page.name} needs {module}: pip install "fastmlp[{extra}]"')
    run_page(page)


def test_habit_scripts_write_their_files(docs_workdir, capsys):
    # the Keras-habit and PyTorch-habit scripts of the training guide (once in the README)
    text = (DOCS / "guides" / "training.md").read_text(encoding="utf-8")
    for marker in ("keras-habits", "torch-habits"):
        m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
        assert m, f"docs/guides/training.md has no script after <!-- {marker} -->"
        exec(compile(m.group(1), f"training.md {marker}", "exec"), {"__name__": "__docs__"})
        assert "accuracy" in capsys.readouterr().out
    assert (docs_workdir / "best.fmlp").is_file() and (docs_workdir / "training.csv").is_file()


# --- (a) the site -----------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f'{module} is not installed; pip install "fastmlp[docs]" to build the site')
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(r.stderr[-3000:])
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    site = tmp_path / "site"
    top = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="fastmlp.model.Sequential.fit"' in top        # the reference came from the docstrings
    for module in API_MODULES:
        page = (site / "api" / module / "index.html").read_text(encoding="utf-8")
        assert f'id="fastmlp.{module}"' in page, f"docs/api/{module}.md renders no fastmlp.{module}"
    layers = (site / "api" / "layers" / "index.html").read_text(encoding="utf-8")
    assert 'id="fastmlp.layers.Dense"' in layers
