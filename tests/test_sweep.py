"""Sweeps (fastmlp/sweep.py): configurations x seeds in worker processes or on Dask.

- 2 local worker processes: every run happens in a worker (not this process), rows land in
  results.json / results.csv, the Markdown table and the closing key=value line are printed;
- a failing configuration is recorded with its error and the sweep goes on;
- a sweep started again skips the finished rows and leaves them as they were; one killed
  (SIGKILL) in the middle loses no finished row;
- a Dask LocalCluster on 127.0.0.1 (2 worker processes) runs the same sweep with the
  default ``train_mlp`` (skipped, with the reason, without dask.distributed);
- ``fastmlp sweep FILE.toml``; the grid, the names, and bad arguments refused.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fastmlp as fm
from fastmlp.cli import main
from fastmlp.sweep import RESULTS_CSV, RESULTS_JSON, closing_line, configurations, grid, load_toml, markdown

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": "shapes", "samples": 200, "image_size": 10, "epochs": 1, "hidden": [8], "batch_size": 32}


def fake_run(config, seed):
    """A stand-in training run: a known accuracy, the worker's pid, a planted failure."""
    time.sleep(config.get("sleep", 0.0))
    if config.get("fail"):
        raise RuntimeError(f"planted failure of {config['lr']}")
    if config.get("log"):
        Path(config["log"], f"{config['lr']}-{seed}-{os.getpid()}").touch()
    return {"test_acc": config["lr"] * 10 + seed / 100, "pid": os.getpid()}


def pairs(text):
    return dict(kv.split("=", 1) for kv in text.strip().splitlines()[-1].split())


def collect():
    lines = []
    return lines, lambda *a: lines.append(" ".join(map(str, a)))


def test_two_local_workers_run_every_row_and_write_the_table(tmp_path):
    lines, pr = collect()
    rows = fm.sweep({"lr": [0.01, 0.02]}, seeds=[0, 1], base={"sleep": 0.3}, run=fake_run, workers=2,
                    out=tmp_path, print_fn=pr)
    assert [(r["config"]["lr"], r["seed"]) for r in rows] == [(0.01, 0), (0.01, 1), (0.02, 0), (0.02, 1)]
    assert all(r["status"] == "ok" for r in rows)
    assert all(r["test_acc"] == pytest.approx(r["config"]["lr"] * 10 + r["seed"] / 100) for r in rows)
    pids = {r["pid"] for r in rows}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    saved = json.loads((tmp_path / RESULTS_JSON).read_text())["rows"]
    assert len(saved) == 4
    csv_lines = (tmp_path / RESULTS_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("name,seed,status,error,") and len(csv_lines) == 5
    out = "\n".join(lines)
    assert "| 1 | lr=0.02 | 2/2 |" in out and "0.2050 ± 0.0071" in out
    kv = pairs(out)
    assert kv["runs"] == "4" and kv["ok"] == "4" and kv["failed"] == "0" and kv["best_config"] == "1"


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(tmp_path):
    lines, pr = collect()
    rows = fm.sweep([{"lr": 0.01}, {"lr": 0.02, "fail": True}, {"lr": 0.03}], seeds=[0], run=fake_run,
                    workers=2, out=tmp_path, print_fn=pr)
    status = {r["config"]["lr"]: (r["status"], r["error"]) for r in rows}
    assert status[0.01][0] == "ok" and status[0.03][0] == "ok"
    assert status[0.02] == ("error", "RuntimeError: planted failure of 0.02")
    saved = {r["config"]["lr"]: r for r in json.loads((tmp_path / RESULTS_JSON).read_text())["rows"]}
    assert "planted failure" in saved[0.02]["traceback"] and "traceback" not in saved[0.01]
    assert pairs("\n".join(lines))["failed"] == "1"


def test_a_restarted_sweep_skips_the_finished_rows(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    base = {"log": str(log)}
    first = fm.sweep({"lr": [0.01]}, seeds=[0, 1], base=base, run=fake_run, workers=2, out=tmp_path / "s",
                     print_fn=lambda *a: None)
    assert len(list(log.iterdir())) == 2
    lines, pr = collect()
    rows = fm.sweep({"lr": [0.01, 0.02]}, seeds=[0, 1], base=base, run=fake_run, workers=2, out=tmp_path / "s",
                    print_fn=pr)
    ran = sorted(p.name.rsplit("-", 1)[0] for p in log.iterdir())
    assert ran == ["0.01-0", "0.01-1", "0.02-0", "0.02-1"]   # the first two ran once
    assert rows[:2] == first   # kept as they were, pid and seconds included
    assert pairs("\n".join(lines))["skipped"] == "2"


def test_a_killed_sweep_loses_no_finished_row(tmp_path):
    script = tmp_path / "run_sweep.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fastmlp as fm
        from test_sweep import fake_run
        if __name__ == "__main__":
            fm.sweep({{"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}}, seeds=[0], base={{"sleep": 1.0}},
                     run=fake_run, workers=1, out={str(tmp_path / "s")!r}, plot=False)
    '''))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    results = tmp_path / "s" / RESULTS_JSON
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.is_file() and len(json.loads(results.read_text())["rows"]) >= 2:
            break
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)   # the sweep and its worker
    p.wait(timeout=30)
    before = json.loads(results.read_text())["rows"]
    assert 2 <= len(before) < 6
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    after = json.loads(results.read_text())["rows"]
    assert len(after) == 6 and all(row["status"] == "ok" for row in after)
    for row in before:   # every row finished before the kill is there, unchanged
        assert row in after
    assert pairs(r.stdout)["skipped"] == str(len(before))


def test_a_dask_local_cluster_on_the_loopback_runs_the_sweep(tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason='needs Dask: pip install "fastmlp[sweep]"')
    with distributed.LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        lines, pr = collect()
        rows = fm.sweep([{"hidden": [8]}, {"hidden": [12]}, {"hidden": [8], "activation": "nope"}], seeds=[0],
                        base=TINY, scheduler=cluster.scheduler_address, out=tmp_path, print_fn=pr)
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert "activation" in rows[2]["error"] and 0.0 <= rows[0]["test_acc"] <= 1.0
    assert all(str(os.getpid()) not in r["worker"].split(":")[-1] for r in rows[:2])
    assert len(json.loads((tmp_path / RESULTS_JSON).read_text())["rows"]) == 3
    assert pairs("\n".join(lines))["ok"] == "2"


def test_cli_sweep_runs_a_toml_file(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(textwrap.dedent('''
        seeds = [0, 1]
        out = "results"
        [base]
        data = "shapes"
        samples = 200
        image_size = 10
        epochs = 1
        batch_size = 32
        [grid]
        hidden = [[8], [16]]
        [[config]]
        name = "wrong key"
        widht = 3
    '''))
    rc = main(["sweep", str(tmp_path / "s.toml"), "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    kv = pairs(out)
    assert kv["runs"] == "6" and kv["ok"] == "4" and kv["failed"] == "2"
    assert "unknown configuration key(s) ['widht']" in out and "| 0 | hidden=8 |" in out
    assert (tmp_path / "results" / RESULTS_CSV).is_file()


def test_cli_sweep_refuses_a_missing_or_bad_file(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml")]) == 1
    assert "sweep file not found" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("seeds = [0]\nepochs = 3\n")
    assert main(["sweep", str(tmp_path / "bad.toml")]) == 1
    assert "unknown top-level key(s) ['epochs']" in capsys.readouterr().err


def test_grid_names_and_bad_arguments():
    assert grid({"a": [1, 2], "b": ["x", "y"]}, base={"c": 0}) == [
        {"c": 0, "a": 1, "b": "x"}, {"c": 0, "a": 1, "b": "y"}, {"c": 0, "a": 2, "b": "x"}, {"c": 0, "a": 2, "b": "y"}]
    named = configurations([{"lr": 1}, {"name": "mine", "lr": 2}], base={"lr": 1})
    assert named == [("base", {"lr": 1}), ("mine", {"lr": 2})]
    with pytest.raises(ValueError, match="distinct configuration names"):
        configurations([{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="non-empty list"):
        grid({"lr": []})
    with pytest.raises(ValueError, match="seeds"):
        fm.sweep([{"lr": 1}], seeds=[-1], run=fake_run)
    with pytest.raises(ValueError, match="workers"):
        fm.sweep([{"lr": 1}], seeds=[0], run=fake_run, workers=0)
    with pytest.raises(TypeError, match="JSON"):
        configurations([{"lr": object()}])


def test_the_report_of_rows():
    rows = [{"name": "a", "seed": 0, "status": "ok", "error": "", "config": {}, "test_acc": 0.5, "seconds": 1.0},
            {"name": "a", "seed": 1, "status": "ok", "error": "", "config": {}, "test_acc": 0.7, "seconds": 1.0},
            {"name": "b", "seed": 0, "status": "error", "error": "E: x", "config": {}, "seconds": 0.0}]
    table = markdown(rows)
    assert "| 0 | a | 2/2 | 0.6000 ± 0.1414 | 1.0 |  |" in table and "| 1 | b | 0/1 | - | - | E: x |" in table
    assert pairs(closing_line(rows, 2.0)) == {"runs": "3", "ok": "2", "failed": "1", "skipped": "0",
                                               "best_config": "0", "best_test_acc": "0.6000", "seconds": "2.0"}


def test_load_toml_resolves_out_beside_the_file(tmp_path):
    (tmp_path / "s.toml").write_text('out = "r"\n[grid]\nlr = [1, 2]\n')
    spec = load_toml(tmp_path / "s.toml")
    assert spec["out"] == str(tmp_path / "r") and spec["configs"] == [{"lr": 1}, {"lr": 2}] and spec["seeds"] == [0]
