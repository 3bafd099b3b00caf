"""The peers runner's own pieces (bench/): the GEMM floor, the JAX peer, the
comparisons and the key=value line, and the skip of the CUDA-graph peer without a GPU."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import flops
    import gemm_floor
    import peer_report
    import peer_runner
    import peers
    from numpy_peer import NumpyMLP
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_floor_runs_the_gemms_that_the_flop_count_counts():
    sizes = [12, 7, 5, 3]
    gemms = gemm_floor.step_gemms(sizes, 4)
    assert len(gemms) == 3 * 3 - 1
    assert sum(2 * r * k * c for r, k, c in gemms) == flops.train_step_flops(sizes, 4)
    # the shapes and transposes of a from-scratch step
    assert gemms[:3] == [(4, 12, 7), (4, 7, 5), (4, 5, 3)]
    assert gemms[3:] == [(5, 4, 3), (4, 3, 5), (7, 4, 5), (4, 5, 7), (12, 4, 7)]


def test_floor_products_are_right_and_follow_the_batch_schedule():
    floor = gemm_floor.GemmFloor([6, 4, 2], n=10, batch_size=4)
    assert floor.steps_per_epoch == 3                 # 4 + 4 + a short batch of 2
    (full, count), (short, one) = floor.schedule
    assert (count, one) == (2, 1)
    assert [c[0].shape[0] for c in (full.calls[0], short.calls[0])] == [4, 2]
    got = [(a.shape, w.shape, out.shape) for a, w, out in full.calls]
    want = [((r, k), (k, c), (r, c)) for r, k, c in gemm_floor.step_gemms([6, 4, 2], 4)]
    assert got == want
    for _, _, out in full.calls:
        out[...] = np.nan
    with gemm_floor.blas_threads(1):
        floor.run(1)
    for a, w, out in full.calls:
        np.testing.assert_allclose(out, a @ w, rtol=1e-6)


def _result(ms):
    """A fake workload result: 10 steps, ms per step of each implementation."""
    w = type("W", (), {"flops_per_sample": 1e6, "samples": 640, "steps": 10})()
    impls = {name: peer_runner.figures(w, [m * 10 / 1e3], 100.0) for name, m in ms.items()}
    return peer_runner.compare({"key": "p2_64", "check": {"results": {}}}, impls)


def test_compare_splits_the_floor_and_finds_the_fastest_peer():
    r = _result({"fastmlp": 1.5, "numpy": 2.0, "torch": 1.8, "jax": 1.2,
                 "torch.compile": 1.9, "floor@1": 1.0, "floor@2": 0.75})
    assert set(r["impls"]) == {"fastmlp", "numpy", "torch", "jax", "torch.compile"}
    assert r["floor"]["threads"] == 2 and r["floor"]["ms_per_step"] == pytest.approx(0.75)
    assert r["impls"]["fastmlp"]["x_floor"] == pytest.approx(2.0)
    assert r["best_peer"] == "jax" and r["vs_best_peer"] == pytest.approx(0.8)
    assert "floor@1" not in r["speedup"] and r["speedup"]["numpy"] == pytest.approx(2 / 1.5)
    kv = dict(p.split("=") for p in peer_report.key_values([r], 300.0, 2).split())
    assert kv["p2_64_torch_compile_ms"] == "1.9" and kv["p2_64_jax_ms"] == "1.2"
    assert kv["p2_64_floor_ms"] == "0.75" and kv["p2_64_fastmlp_floor_ratio"] == "2.000"
    assert kv["p2_64_vs_best_peer"] == "0.80" and kv["p2_64_best_peer"] == "jax"
    assert kv["p2_64_vs_torch_compile"] == "1.27"


def test_jax_step_matches_the_numpy_float64_step():
    jax = pytest.importorskip("jax", reason="the JAX peer needs jax (the peers extra)")
    from jax_peer import JaxMLP
    rng = np.random.default_rng(0)
    weights = peer_runner.init_weights([20, 16, 5])
    X = rng.random((12, 20), dtype=np.float32)
    y = rng.integers(0, 5, 12)
    ref = NumpyMLP(weights, "softmax_xent", 0.1, np.float64)
    ref_loss = ref.step(X.astype(np.float64), y)
    for dtype, tol in (("float32", 1e-5), ("float64", 1e-12)):
        peer = JaxMLP(jax, weights, "softmax_xent", 0.1, dtype)
        loss = peer.step(*peer.to_device(X, y))
        assert abs(loss - ref_loss) <= tol * abs(ref_loss)
        for got, want in zip(peer.get_weights(), ref.get_weights()):
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # fit keeps the NumPy peer's schedule: 12 samples at batch 5 are 3 steps (5, 5, 2)
    peer = JaxMLP(jax, weights, "softmax_xent", 0.1)
    ref = NumpyMLP(weights, "softmax_xent", 0.1, np.float64)
    got = peer.fit(*peer.to_device(X, y), 2, 5, np.random.default_rng(3))
    want = ref.fit(X.astype(np.float64), y, 2, 5, np.random.default_rng(3))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_jax_bce_step_matches_numpy_where_the_logits_are_exactly_zero():
    # rows whose ReLUs are all dead give z = b = 0 exactly (P1 at the start): the gradient of
    # the binary cross-entropy there is sigmoid(0) - t, which max(z, 0) + log1p(exp(-|z|))
    # got wrong under JAX's derivative of max at a tie
    jax = pytest.importorskip("jax", reason="the JAX peer needs jax (the peers extra)")
    from jax_peer import JaxMLP
    rng = np.random.default_rng(0)
    weights = peer_runner.init_weights([6, 4, 1])
    weights[0][...] = -1.0                           # every hidden ReLU dead on X >= 0
    X = rng.random((10, 6), dtype=np.float32)
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], np.float32).reshape(-1, 1)   # mean 0.2
    ref = NumpyMLP(weights, "bce", 0.5, np.float64)
    ref.step(X.astype(np.float64), y.astype(np.float64))
    peer = JaxMLP(jax, weights, "bce", 0.5, "float64")
    with peer._precision():
        peer.step(*peer.to_device(X, y))
    got_b, want_b = peer.get_weights()[-1], ref.get_weights()[-1]
    assert abs(float(want_b[0])) > 0.05                # the step moved the last bias
    np.testing.assert_allclose(got_b, want_b, rtol=1e-12)


def test_cuda_graph_peer_is_skipped_with_a_reason_without_a_gpu():
    torch = pytest.importorskip("torch", reason="the PyTorch peers need torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the peer runs instead")
    args = peers.parse_args(["--device", "cuda", "--only", "torch-cudagraph", "--workload", "p2"])
    ctx = peer_runner.open_contestants(args)
    assert ctx.torch is None and "no CUDA device" in ctx.skipped["torch-cudagraph"]
    assert ctx.makers() == []
    args = peers.parse_args(["--only", "torch-cudagraph", "--workload", "p2"])
    ctx = peer_runner.open_contestants(args)
    assert "need --device cuda" in ctx.skipped["torch-cudagraph"]
    assert ctx.makers() == []
    with pytest.raises(RuntimeError, match="CUDA device"):
        from torch_peer import TorchCudaGraphMLP
        TorchCudaGraphMLP(torch, peer_runner.init_weights([4, 3]), "softmax_xent", 0.1)


def test_isolate_options_are_checked():
    with pytest.raises(SystemExit):
        peers.parse_args(["--isolate", "--only", "jax"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--isolate", "--rounds", "0"])
    args = peers.parse_args(["--isolate", "--rounds", "3", "--workload", "p2"])
    assert args.isolate and args.rounds == 3 and args.only is None
