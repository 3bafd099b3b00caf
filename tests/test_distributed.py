"""Data-parallel training (fastmlp/distributed) with real processes under ``mpiexec -n 2``.

Each test writes a script to tmp_path and starts it with mpiexec (skipped, with the
reason, where mpi4py or mpiexec are missing); ranks save what they computed and the
test compares it here:
- 2 ranks equal 1 process on the same global batch (float64 to 1e-10 relative,
  float32 to 1e-5), with L1/L2, a last partial batch, validation, and both ranks
  end bitwise equal with equal histories; with BatchNorm and Dropout the ranks stay
  bitwise equal too; a checkpointed and resumed 2-rank run equals an uninterrupted
  one bitwise, and only the root writes the checkpoint;
- deterministic mode: two launches give bitwise the same weights;
- bad input (a world larger than the batch, other data on one rank, NaN on one
  rank) is refused on every rank before training, and a diverged run raises on both;
- an h5py.Dataset: each rank reads only the rows of its shares;
- an exception on rank 1 (in fit, or outside it) ends rank 0 within 60 s with that
  rank's message; SIGKILL of rank 1 ends the job within 30 s and the last
  checkpoint loads;
- ``mpiexec -n 2 fastmlp train`` prints once and writes the model once; Ctrl-C stops both
  ranks after the same step, the root saves, and ``--resume`` continues;
- in-process: a world of one without mpiexec trains bitwise as without comm; the
  shares; launcher detection; the NCCL reducer's calls through a stand-in CuPy
  (and on a real GPU at world size 1 where one is present).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.distributed import Comm, comm as comm_module, launched_size, shares
from fastmlp.distributed.reduce import NcclSum, gradient_reducer

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason='needs mpi4py and mpiexec: pip install "fastmlp[distributed]"')

# the model and data every script and the in-process reference build (seeded)
COMMON = textwrap.dedent('''
    import os, sys, json, time
    import numpy as np
    import fastmlp as fm

    def data(n=203, d=12, k=3, seed=0):
        rng = np.random.default_rng(seed)
        return rng.normal(size=(n, d)), rng.integers(0, k, n)

    def mlp(dtype, opt="sgd", extra=False):
        layers = [fm.Dense(12, 16, l2=1e-3), fm.ReLU(), fm.Dense(16, 3, l1=1e-4)]
        if extra:   # BatchNorm and Dropout: per-rank batch statistics and masks
            layers = [fm.Dense(12, 16), fm.BatchNorm(16), fm.ReLU(), fm.Dropout(0.3), fm.Dense(16, 3)]
        optimizer = fm.SGD(lr=0.05, momentum=0.9) if opt == "sgd" else fm.Adam(lr=0.01)
        return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=optimizer, dtype=dtype, seed=3)

    def flat(model):
        return np.concatenate([w.ravel() for w in model.get_weights()])

    def history(h):
        return {k: [float(x) for x in v] for k, v in h.history.items() if k != "seconds"}
''')

FIT = dict(epochs=3, batch_size=50, validation_split=0.2)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        e[var] = "1"   # two ranks share the machine's cores
    return e


def mpirun(tmp_path, body, *args, n=2, timeout=240):
    """Run COMMON + body under ``mpiexec -n n``; returns (CompletedProcess, seconds)."""
    script = tmp_path / f"script_{abs(hash(body)) % 10**8}.py"
    script.write_text(COMMON + textwrap.dedent(body))
    t0 = time.monotonic()
    r = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(script), *map(str, args)], cwd=tmp_path,
                       env=env(), capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def common():
    ns = {}
    exec(COMMON, ns)
    return ns


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---------------------------------------------------------------------- one launch, many checks

MAIN = '''
comm = fm.distributed.init()
out = sys.argv[1]
res = {}
X, y = data()
for dtype, opt in (("float64", "sgd"), ("float32", "adam")):
    m = mlp(dtype, opt)
    h = m.fit(X, y, **json.loads(sys.argv[2]), comm=comm)
    np.save(f"{out}/w_{dtype}_{comm.rank}.npy", flat(m))
    res[dtype] = history(h)
# a last batch of 1 row: rank 1's share is empty, it adds a zero gradient
m = mlp("float64")
m.fit(X[:201], y[:201], epochs=2, batch_size=50, comm=comm)
np.save(f"{out}/w_empty_{comm.rank}.npy", flat(m))
# BatchNorm (per-rank statistics) and Dropout (per-rank masks): the ranks still agree
m = mlp("float64", extra=True)
res["extra"] = history(m.fit(X, y, epochs=2, batch_size=54, validation_split=0.2, comm=comm))
np.save(f"{out}/w_extra_{comm.rank}.npy", np.concatenate([flat(m)] + [np.ravel(v) for st in
        [l.get_state() for l in m.layers] for v in st.values()]))
# deterministic mode
comm = fm.distributed.init(deterministic=True)
m = mlp("float32", "adam")
m.fit(X, y, epochs=2, batch_size=64, comm=comm)
np.save(f"{out}/w_det_{comm.rank}.npy", flat(m))
comm = fm.distributed.init(deterministic=False)
# checkpoint after 2 epochs, resume to 4 == 4 straight; rank 1 is given another path: the root writes
ck = f"{out}/ck.fmlp" if comm.is_root else f"{out}/ck_rank1.fmlp"
mlp("float64").fit(X, y, epochs=2, batch_size=50, checkpoint=ck, comm=comm)
m = mlp("float64")
m.fit(X, y, epochs=4, batch_size=50, resume=f"{out}/ck.fmlp", comm=comm)
straight = mlp("float64")
straight.fit(X, y, epochs=4, batch_size=50, comm=comm)
res["resume_equal"] = bool(np.array_equal(flat(m), flat(straight)))
# bad input: refused on every rank before training, the weights untouched
def refused(**kw):
    m = mlp("float64")
    before = flat(m)
    try:
        m.fit(kw.pop("X", X), y, comm=comm, **kw)
    except Exception as e:
        return [type(e).__name__, str(e), bool(np.array_equal(before, flat(m)))]
    return None
Xo = X.copy()
if comm.rank == 1:
    Xo[7, 3] += 1.0
Xn = X.copy()
if comm.rank == 1:
    Xn[5, 0] = np.nan
res["bad_batch"] = refused(batch_size=1)
res["bad_other_data"] = refused(X=Xo, batch_size=50)
res["bad_nan_on_one_rank"] = refused(X=Xn, batch_size=50)
# a diverging run: both ranks raise at the same step
m = mlp("float64")
m.optimizer.lr = 1e30
try:
    m.fit(X * 1e30, y, epochs=2, batch_size=50, comm=comm)
    res["diverged"] = None
except fm.NonFiniteLossError as e:
    res["diverged"] = [e.epoch, e.step]
# an h5py.Dataset: each rank reads only the rows of its shares
import h5py

class Recorder:
    def __init__(self, ds):
        self.ds, self.shape, self.dtype = ds, ds.shape, ds.dtype
        self.rows, self.on = [], False
    def __getitem__(self, key):
        if self.on and isinstance(key, np.ndarray):
            self.rows.append(key.copy())
        elif self.on and isinstance(key, slice):
            self.rows.append(np.arange(key.start, key.stop))
        return self.ds[key]

class Epochs(fm.Callback):
    def __init__(self, rec):
        self.rec, self.per_epoch = rec, []
    def on_train_begin(self, logs=None):
        self.rec.on = True
    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(sorted(int(i) for a in self.rec.rows for i in a))
        self.rec.rows = []

with h5py.File(sys.argv[3], "r") as f:
    rec = Recorder(f["X"])
    cb = Epochs(rec)
    m = mlp("float64")
    h = m.fit(rec, y, epochs=2, batch_size=50, callbacks=[cb], comm=comm)
    res["h5_rows"] = cb.per_epoch
    np.save(f"{out}/w_h5_{comm.rank}.npy", flat(m))
json.dump(res, open(f"{out}/res_{comm.rank}.json", "w"))
'''


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    if not HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec: pip install "fastmlp[distributed]"')
    h5py = pytest.importorskip("h5py")
    tmp = tmp_path_factory.mktemp("mpi")
    X, _ = common()["data"]()
    with h5py.File(tmp / "x.h5", "w") as f:
        f["X"] = X
    r, seconds = mpirun(tmp, MAIN, tmp, json.dumps(FIT), tmp / "x.h5")
    print(f"main launch: {seconds:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    res = [json.loads((tmp / f"res_{k}.json").read_text()) for k in (0, 1)]
    return tmp, res


def load(tmp, what, rank):
    return np.load(tmp / f"w_{what}_{rank}.npy")


@needs_mpi
@pytest.mark.parametrize("dtype,opt,tol", [("float64", "sgd", 1e-10), ("float32", "adam", 1e-5)])
def test_two_ranks_equal_one_process_on_the_same_global_batch(main_run, dtype, opt, tol):
    tmp, res = main_run
    ns = common()
    X, y = ns["data"]()
    single = ns["mlp"](dtype, opt)
    h = ns["history"](single.fit(X, y, **FIT))
    w0, w1 = load(tmp, dtype, 0), load(tmp, dtype, 1)
    err = rel(w0, ns["flat"](single))
    print(f"{dtype}: 2 ranks vs 1 process, weights relative error {err:.2e}")
    assert np.array_equal(w0, w1), "the two ranks' weights differ"
    assert err <= tol
    assert res[0][dtype] == res[1][dtype], "the ranks' histories differ"
    for key, values in h.items():
        herr = rel(res[0][dtype][key], values)
        print(f"  {key}: relative error {herr:.2e}")
        assert herr <= tol * 10, key


@needs_mpi
def test_an_empty_share_of_a_last_batch_smaller_than_the_world(main_run):
    tmp, _ = main_run
    ns = common()
    X, y = ns["data"]()
    single = ns["mlp"]("float64")
    single.fit(X[:201], y[:201], epochs=2, batch_size=50)
    w0 = load(tmp, "empty", 0)
    assert np.array_equal(w0, load(tmp, "empty", 1)) and rel(w0, ns["flat"](single)) <= 1e-10


@needs_mpi
def test_a_planted_difference_is_caught_by_the_comparison(main_run):
    tmp, _ = main_run
    ns = common()
    X, y = ns["data"]()
    single = ns["mlp"]("float64", "sgd")
    single.fit(X, y, **dict(FIT, epochs=2))   # one epoch fewer: the check must see it
    assert rel(load(tmp, "float64", 0), ns["flat"](single)) > 1e-6


@needs_mpi
def test_batchnorm_and_dropout_ranks_stay_bitwise_equal(main_run):
    tmp, res = main_run
    assert np.array_equal(load(tmp, "extra", 0), load(tmp, "extra", 1))
    assert res[0]["extra"] == res[1]["extra"]
    assert np.all(np.isfinite(res[0]["extra"]["loss"]))


@needs_mpi
def test_resume_equals_uninterrupted_and_only_the_root_writes(main_run):
    tmp, res = main_run
    assert res[0]["resume_equal"] and res[1]["resume_equal"]
    assert (tmp / "ck.fmlp").is_file() and not (tmp / "ck_rank1.fmlp").exists()
    assert fm.load_model(tmp / "ck.fmlp").position["epoch"] == 2


@needs_mpi
def test_deterministic_mode_is_bitwise_equal_across_two_launches(main_run, tmp_path):
    tmp, _ = main_run
    body = '''
    comm = fm.distributed.init(deterministic=True)
    X, y = data()
    m = mlp("float32", "adam")
    m.fit(X, y, epochs=2, batch_size=64, comm=comm)
    np.save(f"{sys.argv[1]}/w_det_{comm.rank}.npy", flat(m))
    '''
    r, _ = mpirun(tmp_path, body, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    first = load(tmp, "det", 0)
    assert np.array_equal(first, load(tmp, "det", 1))
    assert np.array_equal(first, load(tmp_path, "det", 0)) and np.array_equal(first, load(tmp_path, "det", 1))


@needs_mpi
def test_bad_input_is_refused_on_every_rank_before_training(main_run):
    _, res = main_run
    for rank in (0, 1):
        kind, msg, untouched = res[rank]["bad_batch"]
        assert kind == "ValueError" and "world size 2" in msg and untouched
        kind, msg, untouched = res[rank]["bad_other_data"]
        assert "rank 1 was given different training data (X, y)" in msg and untouched
    kind, msg, untouched = res[1]["bad_nan_on_one_rank"]
    assert kind == "ValueError" and "NaN" in msg and untouched
    kind, msg, untouched = res[0]["bad_nan_on_one_rank"]
    assert kind == "CollectiveError" and "rank 1 of 2" in msg and "NaN" in msg and untouched


@needs_mpi
def test_a_diverging_run_raises_on_both_ranks_at_the_same_step(main_run):
    _, res = main_run
    assert res[0]["diverged"] is not None and res[0]["diverged"] == res[1]["diverged"]


@needs_mpi
def test_each_rank_reads_only_the_rows_of_its_shares_of_an_h5_dataset(main_run):
    tmp, res = main_run
    n = 203
    for epoch in range(2):
        r0, r1 = (set(res[k]["h5_rows"][epoch]) for k in (0, 1))
        print(f"epoch {epoch}: rank 0 read {len(r0)} rows, rank 1 {len(r1)}")
        assert not r0 & r1 and r0 | r1 == set(range(n))
        assert len(res[0]["h5_rows"][epoch]) == len(r0) and abs(len(r0) - len(r1)) <= 5
    ns = common()
    X, y = ns["data"]()
    single = ns["mlp"]("float64")
    single.fit(X, y, epochs=2, batch_size=50)
    assert rel(load(tmp, "h5", 0), ns["flat"](single)) <= 1e-10


# ---------------------------------------------------------------------- faults

FAIL_IN_FIT = '''
comm = fm.distributed.init()
class Fail(fm.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if comm.rank == 1 and epoch == 1:
            raise RuntimeError("planted failure on rank 1")
X, y = data()
mlp("float64").fit(X, y, epochs=1000, batch_size=50, callbacks=[Fail()], comm=comm)
print("rank", comm.rank, "finished: the failure did not end the world")
'''

FAIL_OUTSIDE_FIT = '''
comm = fm.distributed.init()
if comm.rank == 1:
    raise RuntimeError("planted failure on rank 1")
comm.barrier()   # rank 0 waits here for a rank that will never come
print("rank", comm.rank, "finished: the failure did not end the world")
'''


@needs_mpi
@pytest.mark.parametrize("body", [FAIL_IN_FIT, FAIL_OUTSIDE_FIT], ids=["in_fit", "outside_fit"])
def test_an_exception_on_rank_1_ends_rank_0_within_60_s_with_its_message(tmp_path, body):
    r, seconds = mpirun(tmp_path, body, timeout=120)
    print(f"ended in {seconds:.1f} s with status {r.returncode}")
    assert r.returncode != 0
    assert "planted failure on rank 1" in r.stderr and "rank 1 of 2" in r.stderr
    assert "finished" not in r.stdout
    assert seconds < 60


@needs_mpi
def test_sigkill_of_a_rank_ends_the_job_in_bounded_time_and_the_checkpoint_loads(tmp_path):
    body = '''
    import signal
    comm = fm.distributed.init()
    class Kill(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if comm.rank == 1 and epoch == 3:
                os.kill(os.getpid(), signal.SIGKILL)
    X, y = data()
    mlp("float64").fit(X, y, epochs=1000, batch_size=50, callbacks=[Kill()], checkpoint="ck.fmlp", comm=comm)
    print("rank", comm.rank, "finished")
    '''
    r, seconds = mpirun(tmp_path, body, timeout=120)
    print(f"SIGKILL of rank 1: the job ended in {seconds:.1f} s with status {r.returncode}")
    assert r.returncode != 0 and "finished" not in r.stdout
    assert seconds < 30
    model = fm.load_model(tmp_path / "ck.fmlp")
    assert model.position["epoch"] >= 3


@needs_mpi
def test_cli_train_under_mpiexec_prints_once_and_writes_once(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastmlp", "train", "shapes", "--model", "mlp",
                        "--samples", "300", "--image-size", "12", "--hidden", "16", "--epochs", "2", "--batch-size", "32",
                        "--out", str(out)], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    print(f"{time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("train_acc=") == 1 and r.stdout.count("epoch 2:") == 1
    assert "data-parallel over 2 ranks" in r.stdout
    assert (out / "model.fmlp").is_file() and json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


@needs_mpi
def test_ctrl_c_under_mpiexec_stops_every_rank_after_the_same_step_and_resumes(tmp_path):
    import signal
    out = tmp_path / "run"
    argv = [MPIEXEC, "-n", "2", sys.executable, "-m", "fastmlp", "train", "shapes", "--model", "mlp",
            "--samples", "3000", "--image-size", "16", "--hidden", "64", "--batch-size", "16", "--out", str(out)]
    p = subprocess.Popen(argv + ["--epochs", "500"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        for line in p.stdout:   # the root prints a line an epoch
            if line.startswith("epoch 2:") or time.monotonic() > deadline:
                break
        p.send_signal(signal.SIGINT)   # Hydra forwards it to every rank
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    print(stderr[-600:])
    assert p.returncode == 130
    assert stderr.count("fastmlp train: interrupted") == 1 and "saved the model trained so far" in stderr
    epoch = fm.load_model(out / "model.fmlp").position["epoch"]
    r = subprocess.run(argv + ["--epochs", str(epoch + 2), "--resume"], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"epoch {epoch + 2}:") == 1 and "train_acc=" in r.stdout


@needs_mpi
def test_cli_error_under_mpiexec_ends_every_rank(tmp_path):
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastmlp", "train", "no_such_data.h5"],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "data not found" in r.stderr


# ---------------------------------------------------------------------- in-process

def test_world_of_one_without_mpiexec_trains_as_without_comm(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(comm_module, "_WORLD", None)
    assert comm_module.joined() is None
    comm = fm.distributed.init()
    assert comm_module.joined() is comm and fm.distributed.init() is comm
    assert (comm.rank, comm.size, comm.is_root, comm.local_rank) == (0, 1, True, 0)
    assert comm.sum([1.5, 2.0]).tolist() == [1.5, 2.0] and comm.allgather("x") == ["x"] and comm.bcast(3) == 3
    ns = common()
    X, y = ns["data"]()
    a, b = ns["mlp"]("float32", "adam"), ns["mlp"]("float32", "adam")
    ha = a.fit(X, y, epochs=2, batch_size=32, validation_split=0.2)
    hb = b.fit(X, y, epochs=2, batch_size=32, validation_split=0.2, comm=comm)
    assert np.array_equal(ns["flat"](a), ns["flat"](b)) and ns["history"](ha) == ns["history"](hb)


def test_world_of_one_does_not_import_mpi4py():
    code = "import sys, fastmlp as fm; c = fm.distributed.init(); print(c.size, 'mpi4py' in sys.modules)"
    e = {k: v for k, v in env().items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")}
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["1", "False"], r.stderr


def test_comm_must_come_from_init():
    ns = common()
    X, y = ns["data"]()
    with pytest.raises(TypeError, match="fastmlp.distributed.init"):
        ns["mlp"]("float32").fit(X, y, comm="world")


def test_launched_size_reads_the_launchers_variables():
    assert launched_size({}) == 1
    assert launched_size({"PMI_SIZE": "4"}) == 4
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert launched_size({"SLURM_STEP_NUM_TASKS": "8"}) == 8
    assert launched_size({"PMI_SIZE": "junk"}) == 1


@pytest.mark.parametrize("m,size", [(10, 3), (7, 7), (256, 2), (3, 4)])
def test_shares_cover_the_batch_once_in_order(m, size):
    s = shares(m, size)
    assert s[0][0] == 0 and s[-1][1] == m
    assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
    sizes = [hi - lo for lo, hi in s]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


# ---------------------------------------------------------------------- NCCL, host side

class FakeComm:
    def __init__(self, rank, size, deterministic):
        self.rank, self.size, self.deterministic, self.is_root = rank, size, deterministic, rank == 0
        self.bcasts = []

    def bcast(self, obj, root=0):
        self.bcasts.append(obj)
        return obj if self.is_root else b"uid-from-root"


class FakeNccl:
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    # what the other rank holds: the stand-in sums or gathers with it
    other = None

    def __init__(self):
        self.calls = []
        fake = self

        class Communicator:
            def __init__(self, size, uid, rank):
                fake.calls.append(("init", size, uid, rank))

            def allReduce(self, send, recv, count, dtype, op, stream):
                fake.calls.append(("allReduce", send, recv, count, dtype, op, stream))
                fake.buffers[recv] += fake.other

            def allGather(self, send, recv, count, dtype, stream):
                fake.calls.append(("allGather", send, recv, count, dtype, stream))
                fake.buffers[recv][0], fake.buffers[recv][1] = fake.buffers[send], fake.other

        self.NcclCommunicator = Communicator
        self.buffers = {}

    def get_unique_id(self):
        return b"uid-made-by-root"


class FakeArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr``."""

    @property
    def data(self):
        return type("Mem", (), {"ptr": self.__array_interface__["data"][0]})()


class FakeXp:
    def __init__(self, nccl):
        self.nccl = nccl
        self.cuda = type("cuda", (), {"get_current_stream": staticmethod(
            lambda: type("S", (), {"ptr": 1234})())})
        self.add = np.add

    def empty(self, shape, dtype):
        a = np.zeros(shape, dtype).view(FakeArray)
        self.nccl.buffers[a.data.ptr] = a
        return a


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("rank", [0, 1])
def test_nccl_reducer_calls_through_a_stand_in(rank, deterministic):
    nccl = FakeNccl()
    xp = FakeXp(nccl)
    grads = xp.empty(32, np.float32)
    grads[...] = np.arange(32)
    nccl.other = np.full(32, 0.5, np.float32)
    comm = FakeComm(rank, 2, deterministic)
    red = NcclSum(comm, grads, nccl=nccl, xp=xp)
    assert nccl.calls[0] == ("init", 2, b"uid-made-by-root" if rank == 0 else b"uid-from-root", rank)
    assert comm.bcasts == [b"uid-made-by-root" if rank == 0 else None]
    red(grads)
    call = nccl.calls[1]
    if deterministic:
        assert call[0] == "allGather" and call[1] == grads.data.ptr and call[3:] == (32, nccl.NCCL_FLOAT32, 1234)
    else:
        assert call == ("allReduce", grads.data.ptr, grads.data.ptr, 32, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 1234)
    np.testing.assert_array_equal(grads, np.arange(32, dtype=np.float32) + 0.5)


def test_a_world_of_one_has_no_reducer():
    assert gradient_reducer(Comm(), fm.Sequential([fm.Dense(2, 1)]).be, np.zeros(4)) is None


@pytest.mark.gpu
def test_nccl_at_world_size_one_on_a_gpu():
    ok, why = fm.backend.cuda_available()
    if not ok:
        pytest.skip(f"no CUDA device: {why}")
    pytest.importorskip("cupy.cuda.nccl", reason="CuPy without NCCL: pip install nvidia-nccl-cu12")
    import cupy
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("CuPy was built without NCCL")
    for deterministic in (False, True):
        grads = cupy.arange(40, dtype=cupy.float32)
        red = NcclSum(FakeComm(0, 1, deterministic), grads)
        red(grads)
        np.testing.assert_array_equal(cupy.asnumpy(grads), np.arange(40, dtype=np.float32))
