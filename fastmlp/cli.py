"""The ``fastmlp`` command line: ``demo`` and ``info`` (``fastmlp --help``)."""
import argparse
import os
import platform
import sys
import time


def cmd_demo(args):
    """Train an MLP on the built-in shapes set (no download); print accuracy and speed."""
    import numpy as np

    import fastmlp as fm
    from fastmlp.data import make_shapes

    X, y, classes = make_shapes(args.samples + args.test_samples, size=args.size, seed=args.seed,
                                centered=True)
    X = X.reshape(len(X), -1).astype(np.float32)
    Xtr, ytr, Xte, yte = X[:args.samples], y[:args.samples], X[args.samples:], y[args.samples:]
    d = X.shape[1]
    model = fm.Sequential([fm.Dense(d, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"),
                           fm.ReLU(), fm.Dense(256, len(classes))],
                          loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(lr=args.lr, momentum=0.9),
                          device=args.device, seed=args.seed)
    model.summary()
    t0 = time.perf_counter()
    h = model.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
                  validation_data=(Xte, yte), verbose=2)
    seconds = time.perf_counter() - t0
    test = model.evaluate(Xte, yte)
    sps = args.samples * len(h.epoch) / seconds
    print(f"classes: {', '.join(classes)}")
    print(f"{len(h.epoch)} epochs in {seconds:.2f} s ({sps:,.0f} samples/s, JIT warm-up included)")
    print(f"train_acc={h['accuracy'][-1]:.3f} test_acc={test['accuracy']:.3f} "
          f"samples_per_s={sps:.0f} seconds={seconds:.2f}")
    return 0


def cmd_info(args):
    """Versions, devices, threads, BLAS and the Numba cache."""
    import numba
    import numpy as np

    import fastmlp as fm
    print(f"fastmlp {fm.__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"numpy {np.__version__}  numba {numba.__version__}")
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"BLAS/threads: {pool.get('internal_api')} {pool.get('version')} "
                  f"{pool.get('architecture', '')} threads={pool.get('num_threads')}")
    except ImportError:
        print("BLAS: (install threadpoolctl to show the BLAS library and its threads)")
    print(f"numba threads: {numba.get_num_threads()}  layer: {numba.threading_layer() if False else numba.config.THREADING_LAYER}")
    print(f"numba cache dir: {numba.config.CACHE_DIR or '(beside the package: __pycache__)'}")
    devs = fm.devices()
    print(f"devices: cpu=yes cuda={'yes' if devs['cuda'] else 'no'} ({devs['cuda_reason']})")
    print(f"cpu cores: {os.cpu_count()}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="fastmlp", description="fastmlp: an autograd-free MLP engine")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    d.add_argument("--samples", type=int, default=8000, help="training images (default 8000)")
    d.add_argument("--test-samples", type=int, default=2000)
    d.add_argument("--size", type=int, default=28, help="image side in pixels")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help=cmd_info.__doc__, description=cmd_info.__doc__)
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
