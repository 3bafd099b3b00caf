"""fastmlp.compare, ``fastmlp compare`` and examples/mlp_vs_cnn.py: the analytic figures
agree with the built models and with hand counts; quick runs report every field."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastmlp as fm
from fastmlp.cli import main
from fastmlp.compare import MODELS, analyse, build_model, input_shape, key_values, model_spec, table

ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = {"side", "model", "measured", "params", "forward_flops", "train_flops", "activation_bytes",
              "im2col_bytes"}
MEASURED_FIELDS = {"params_counted", "workspace_per_sample", "forward_samples_per_s", "train_samples_per_s"}
LAST_LINE = {"mlp_test_acc", "cnn_test_acc", "mlp_params", "cnn_params", "mlp_train_sps", "cnn_train_sps"}


def pairs(stdout):
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in stdout.strip().splitlines()[-1].split())}


def hand_params(kind, s, k=10):
    """The closed forms: MLP S^2*256 + 256 + 256*256 + 256 + 256*K + K; the CNNs' conv
    blocks 16*9 + 16 + 2*16 (BatchNorm) + 32*16*9 + 32 + 2*32, then the dense head."""
    if kind == "mlp":
        return s * s * 256 + 256 + 256 * 256 + 256 + 256 * k + k
    convs = (16 * 9 + 16 + 32) + (32 * 16 * 9 + 32 + 64)
    flat = 32 * (s // 4) ** 2 if kind == "cnn" else 32
    return convs + flat * 256 + 256 + 256 * k + k


@pytest.mark.parametrize("side", [28, 64, 128])
@pytest.mark.parametrize("kind", MODELS)
def test_analytic_params_equal_count_params(kind, side):
    analytic = analyse(model_spec(kind, side), input_shape(kind, side))["params"]
    counted = build_model(kind, side).count_params()
    print(f"{kind} {side}: analytic {analytic:,} count_params {counted:,}")
    assert analytic == counted == hand_params(kind, side)


def test_flops_and_activations_match_a_hand_count():
    # 8 x 8 images, 3 classes. CNN: conv 1->16 on 8x8: 2*16*9*64; pool -> 4x4; conv 16->32:
    # 2*32*144*16; pool -> 2x2; dense 128->256, 256->3. Training: 2x the first, 3x the rest.
    cnn = analyse(model_spec("cnn", 8, classes=3), (1, 8, 8))
    convs = [2 * 16 * 9 * 64, 2 * 32 * 144 * 16]
    dense = [2 * 128 * 256, 2 * 256 * 3]
    assert cnn["forward_flops"] == sum(convs + dense) == 232_960
    assert cnn["train_flops"] == 2 * convs[0] + 3 * (convs[1] + sum(dense)) == 680_448
    # input 64, conv 16*64, BN 16*64, ReLU 16*64, pool 16*16, conv 32*16, BN, ReLU, pool 32*4,
    # dense 256 (its ReLU fused), logits 3; im2col 9*64 + 144*16
    assert cnn["activation_bytes"] == 4 * (64 + 3 * 1024 + 256 + 3 * 512 + 128 + 256 + 3)
    assert cnn["im2col_bytes"] == 4 * (9 * 64 + 144 * 16)
    mlp = analyse(model_spec("mlp", 8, classes=3), (64,))
    assert mlp["forward_flops"] == 2 * (64 * 256 + 256 * 256 + 256 * 3)
    assert mlp["train_flops"] == 2 * 2 * 64 * 256 + 3 * 2 * (256 * 256 + 256 * 3)
    assert mlp["activation_bytes"] == 4 * (64 + 256 + 256 + 3) and mlp["im2col_bytes"] == 0


def test_flop_count_agrees_with_the_peers_runner():
    # P3 (the same CNN without BatchNorm, which adds no FLOPs) is 8.29 MFLOP per training sample
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import flops
    finally:
        sys.path.remove(str(ROOT / "bench"))
    p3 = [("conv", 1, 16, 3, 1), ("relu",), ("pool", 2), ("conv", 16, 32, 3, 1), ("relu",), ("pool", 2),
          ("flatten",), ("dense", 1568, 256), ("relu",), ("dense", 256, 10)]
    ours = analyse(model_spec("cnn", 28), (1, 28, 28))["train_flops"]
    assert ours == flops.cnn_train_step_flops(p3, (1, 28, 28), 1) == 8_294_400
    mlp = analyse(model_spec("mlp", 28), (784,))["train_flops"]
    assert mlp == flops.train_step_flops([784, 256, 256, 10], 1) == 1_211_392


def test_quick_compare_reports_every_field():
    r = fm.compare(sizes=(8, 12), analytic_sizes=(40,), quick=True, seed=0)
    json.dumps(r)   # JSON-ready
    assert [(row["side"], row["model"]) for row in r["rows"]] == [(s, k) for s in (8, 12, 40) for k in MODELS]
    for row in r["rows"]:
        assert ROW_FIELDS <= set(row)
        if row["measured"]:
            assert MEASURED_FIELDS <= set(row)
            assert row["params_counted"] == row["params"]
            assert row["forward_samples_per_s"] > 0 and row["train_samples_per_s"] > 0
        else:
            assert not MEASURED_FIELDS & set(row)
    big = {row["model"]: row for row in r["rows"] if row["side"] == 40}
    assert big["cnn_pool"]["params"] < big["mlp"]["params"] < big["cnn"]["params"]
    acc = r["accuracy"]
    assert acc["data"] == "shapes" and set(acc["results"]) == {"mlp", "cnn_pool"}
    for res in acc["results"].values():
        assert {"train_acc", "centred_acc", "shifted_acc", "params", "optimizer", "epochs"} <= set(res)
    text = table(r)
    assert "cnn_pool" in text and "(analytic)" in text and "shifted" in text
    assert set(pairs(key_values(r))) == LAST_LINE


def test_compare_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sides"):
        fm.compare(sizes=(4,), train=False)
    with pytest.raises(ValueError, match="models"):
        fm.compare(sizes=(12,), models=("rnn",), train=False)
    with pytest.raises(ValueError, match="batch_size"):
        fm.compare(sizes=(12,), batch_size=1, train=False)


def test_cli_compare_help_and_tiny_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    assert "--sizes" in capsys.readouterr().out
    out_json, out_png = tmp_path / "c.json", tmp_path / "c.png"
    rc = main(["compare", "--sizes", "12", "--analytic-sizes", "32", "--quick", "--json", str(out_json),
               "--plot", str(out_png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert set(pairs(out)) == LAST_LINE
    saved = json.loads(out_json.read_text())
    assert {row["side"] for row in saved["rows"]} == {12, 32} and "accuracy" in saved
    pytest.importorskip("matplotlib")
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_compare_bad_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--sizes", "28,x"])
    assert e.value.code == 2
    assert "image sides" in capsys.readouterr().err


def test_mnist_quick_run(data_dir):
    if not (data_dir / "mnist-t10k").is_dir():
        pytest.skip(f"no MNIST t10k in {data_dir}")
    r = fm.compare(sizes=(12,), analytic_sizes=(), data=str(data_dir / "mnist-t10k"), quick=True,
                   models=("mlp",))
    acc = r["accuracy"]
    assert acc["data"] == "mnist" and acc["side"] == 28 and set(acc["results"]) == {"mlp", "cnn"}
    print({k: v["test_acc"] for k, v in acc["results"].items()})
    assert all(v["test_acc"] > 0.5 for v in acc["results"].values())


def test_example_last_line_parses():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "examples/mlp_vs_cnn.py", "--quick", "--sizes", "12"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = pairs(r.stdout)
    assert set(got) == LAST_LINE
    assert 0 <= got["mlp_test_acc"] <= 1 and got["cnn_params"] <= got["mlp_params"]
