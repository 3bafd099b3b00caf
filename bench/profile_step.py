"""Where the time of one training step goes: each GEMM, each fused kernel, Python.

    python bench/profile_step.py                      # P2: 784-256-256-10, batch 128
    python bench/profile_step.py --workload p1        # cat / non-cat, full batch
    python bench/profile_step.py --batch 64 --steps 300
    python bench/profile_step.py --workload p3 --batch 64   # the small CNN: im2col, col2im, GEMMs

Every backend op is wrapped with a timer (perf_counter around the call), a
few hundred steps run after a warm-up, and the table gives each op's share of
the step; "python + dispatch" is what is left: the layer loop, argument
passing and the wrappers themselves. The wrapping adds about a microsecond per
call, so the un-instrumented step time is measured first and printed too.
"""
import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastmlp as fm  # noqa: E402
from fastmlp.backend import cpu  # noqa: E402
from fastmlp.backend.cpu import in_place_sgd, zero_tiles  # noqa: E402
from fastmlp.data import load_mnist_t10k  # noqa: E402

OPS = ["matmul", "matmul_pair", "bias_act_forward", "act_backward_bias_grad", "act_forward", "act_backward",
       "softmax_xent", "bce_logits", "mse", "sgd_update", "adam_update", "gather_rows", "reg_penalty",
       "im2col", "col2im", "conv_bias_forward", "conv_bias_backward", "maxpool_forward",
       "maxpool_backward", "conv_bias_act_pool_forward", "conv_bias_act_pool_backward", "transpose",
       "batchnorm_forward", "batchnorm_backward", "conv_act_pool_forward", "conv_act_pool_backward"]


def build(workload, batch):
    rng = np.random.default_rng(0)
    if workload == "p1":
        X = rng.random((209, 12288), dtype=np.float32)
        y = (rng.random(209) > 0.65).astype(np.float32)
        dims, loss, lr = [12288, 20, 7, 5, 1], fm.BinaryCrossEntropy(), 0.0075
    elif workload == "p3":
        X = rng.random((8000, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 8000)
        layers = [fm.Conv2D(1, 16, 3, padding=1, init="he"), fm.ReLU(), fm.MaxPool2D(2),
                  fm.Conv2D(16, 32, 3, padding=1, init="he"), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                  fm.Dense(1568, 256, init="he"), fm.ReLU(), fm.Dense(256, 10)]
        model = fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.05), seed=0,
                              input_shape=(1, 28, 28))
        return model, X, y, batch
    else:
        try:    # P2's own data, as bench/peers.py trains it: MNIST t10k's first 8,000 images
            X, y = load_mnist_t10k()[:2]
            X = (X.reshape(len(X), -1) / 255.0).astype(np.float32)
        except FileNotFoundError as e:
            print(f"MNIST t10k not found ({e}): random pixels, which have no zeros for the first "
                  "layer to skip (backend/cpu/zero_tiles.py)")
            X = rng.random((8000, 784), dtype=np.float32)
            y = rng.integers(0, 10, 8000)
        dims, loss, lr = [784, 256, 256, 10], fm.SoftmaxCrossEntropy(), 0.1
    layers = []
    for i, (d, m) in enumerate(zip(dims, dims[1:])):
        layers.append(fm.Dense(d, m, init="he"))
        if i < len(dims) - 2:
            layers.append(fm.ReLU())
    model = fm.Sequential(layers, loss=loss, optimizer=fm.SGD(lr), seed=0)
    return model, X, y, (None if workload == "p1" else batch)


def steps_of(model, X, y, batch, steps):
    """fit() arguments that run ``steps`` optimizer steps."""
    if batch is None:
        return dict(epochs=steps, batch_size=None, verbose=0)
    per_epoch = X.shape[0] // batch
    return dict(epochs=max(1, steps // per_epoch), batch_size=batch, verbose=0)


def instrument():
    times, calls = defaultdict(float), defaultdict(int)
    originals = {}
    for name in OPS:
        fn = getattr(cpu, name)
        originals[name] = fn

        def timed(*args, _fn=fn, _name=name):
            t = time.perf_counter()
            _fn(*args)
            dt = time.perf_counter() - t
            key = _name
            if _name == "matmul":
                out, a, b = args[:3]
                key = f"matmul {a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}"
            elif _name == "matmul_pair":
                a, b, a2, b2 = args[1], args[2], args[4], args[5]
                key = (f"matmul_pair {a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}, "
                       f"{a2.shape[0]}x{a2.shape[1]} @ {b2.shape[0]}x{b2.shape[1]}")
            times[key] += dt
            calls[key] += 1

        setattr(cpu, name, timed)
    # the first layer's products without the batch's zeros: methods of the layer's ZeroSkip
    for name in ("plan", "forward", "weight_grad", "dense_forward"):
        fn = getattr(zero_tiles.ZeroSkip, name)
        originals[("ZeroSkip", name)] = fn

        def timed_method(self, *args, _fn=fn, _name=name):
            t = time.perf_counter()
            result = _fn(self, *args)
            times[f"zero_skip {_name} {args[0].shape[0]}x{args[0].shape[1]}"] += time.perf_counter() - t
            calls[f"zero_skip {_name} {args[0].shape[0]}x{args[0].shape[1]}"] += 1
            return result

        setattr(zero_tiles.ZeroSkip, name, timed_method)
    # plain SGD's in-place steps (backend/cpu/in_place_sgd.py): the gradient's scan and the update
    for name in ("exponent_bits", "sgd_in_place"):
        fn = getattr(in_place_sgd, name)
        originals[("in_place_sgd", name)] = fn

        def timed_fn(*args, _fn=fn, _name=name):
            t = time.perf_counter()
            result = _fn(*args)
            times[f"in_place_sgd {_name}"] += time.perf_counter() - t
            calls[f"in_place_sgd {_name}"] += 1
            return result

        setattr(in_place_sgd, name, timed_fn)
    return times, calls, originals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["p1", "p2", "p3"], default="p2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-gram", action="store_true", help="p1: the ordinary path, not fastmlp/gram.py")
    args = p.parse_args(argv)

    model, X, y, batch = build(args.workload, args.batch)
    model.full_batch_gram = not args.no_gram
    kw = steps_of(model, X, y, batch, args.steps)
    n_steps = kw["epochs"] * (1 if batch is None else X.shape[0] // batch)
    model.fit(X, y, **steps_of(model, X, y, batch, 20))            # warm-up: JIT, workspaces
    t = time.perf_counter()
    model.fit(X, y, **kw)
    plain = (time.perf_counter() - t) / n_steps

    times, calls, originals = instrument()
    t = time.perf_counter()
    model.fit(X, y, **kw)
    total = time.perf_counter() - t
    for name, fn in originals.items():
        if isinstance(name, tuple):
            setattr(zero_tiles.ZeroSkip if name[0] == "ZeroSkip" else in_place_sgd, name[1], fn)
        else:
            setattr(cpu, name, fn)

    print(f"workload {args.workload}, batch {batch or X.shape[0]}, {n_steps} steps; "
          f"un-instrumented step {plain * 1e3:.3f} ms, instrumented {total / n_steps * 1e3:.3f} ms")
    print(f"{'op':<40} {'calls/step':>10} {'us/step':>10} {'share':>7}")
    accounted = 0.0
    for key, tt in sorted(times.items(), key=lambda kv: -kv[1]):
        accounted += tt
        print(f"{key:<40} {calls[key] / n_steps:>10.1f} {tt / n_steps * 1e6:>10.1f} {tt / total:>7.1%}")
    rest = total - accounted
    print(f"{'python + dispatch (the rest)':<40} {'':>10} {rest / n_steps * 1e6:>10.1f} {rest / total:>7.1%}")
    print(f"step_ms={plain * 1e3:.4f} python_share={rest / total:.3f}")


if __name__ == "__main__":
    main()
