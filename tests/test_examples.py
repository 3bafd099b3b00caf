"""The README's main job, the CLI and the examples run and report what they claim."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, timeout=600, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def last_line_pairs(stdout):
    last = stdout.strip().splitlines()[-1]
    pairs = dict(kv.split("=", 1) for kv in last.split())
    return {k: float(v) for k, v in pairs.items()}


def test_demo_trains_on_builtin_shapes():
    # the demo's task (shapes anywhere in noise) takes several epochs: it shows learning, not a
    # solved task (the centred shapes are solved in the first epoch: --centered)
    r = run(["-m", "fastmlp", "demo", "--samples", "2000", "--test-samples", "500", "--epochs", "4",
             "--verbose", "2"])
    assert r.returncode == 0, r.stderr
    got = last_line_pairs(r.stdout)
    acc = [float(ln.split(" accuracy=")[1].split()[0]) for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    print(got, "epoch accuracy", acc)
    assert len(acc) == 4 and acc[0] < 0.6 and all(b > a for a, b in zip(acc, acc[1:]))
    assert 0.45 <= got["test_acc"] < 0.95 and got["samples_per_s"] > 0
    easy = run(["-m", "fastmlp", "demo", "--samples", "1200", "--test-samples", "400", "--epochs", "2",
                "--centered", "--noise", "0.1", "--verbose", "0"])
    assert easy.returncode == 0, easy.stderr
    assert last_line_pairs(easy.stdout)["test_acc"] >= 0.9


def test_info_reports_devices():
    r = run(["-m", "fastmlp", "info"])
    assert r.returncode == 0, r.stderr
    assert "devices: cpu=yes" in r.stdout and "numba" in r.stdout


def test_help_everywhere():
    for args in (["--help"], ["demo", "--help"], ["info", "--help"]):
        r = run(["-m", "fastmlp"] + args)
        assert r.returncode == 0 and "usage" in r.stdout.lower()


def test_cat_example_short_run(data_dir):
    r = run(["examples/cat_vs_noncat.py", "--data", str(data_dir / "catvnoncat"), "--iterations", "30"])
    assert r.returncode == 0, r.stderr
    got = last_line_pairs(r.stdout)
    assert set(got) == {"train_acc", "test_acc", "ms_per_iter", "seconds"}
    assert 0 <= got["test_acc"] <= 1 and got["ms_per_iter"] > 0
    assert re.search(r"test image 0: predicted '(cat|non-cat)'", r.stdout)


def test_cat_example_missing_data_says_where(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTMLP_DATA=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "cat_vs_noncat.py"), "--data",
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "train_catvnoncat.h5" in r.stderr and "--data" in r.stderr
