"""``fastmlp demo``: an MLP on the built-in shapes, no download."""
import time

from . import options


def run(args):
    """Train an MLP on the built-in shapes (no download): squares, circles, triangles and
    crosses of random size, rotation and position in Gaussian noise. Accuracy climbs over the
    epochs, on the training images and on held-out test images; then accuracy and speed."""
    import numpy as np

    import fastmlp as fm
    from fastmlp.data import make_shapes

    # Shapes anywhere in the image (not centred) and noisy: a dense network has to learn every
    # position separately, so it takes several epochs, and the test accuracy stays below
    # the training accuracy (compare a CNN: fastmlp compare).
    X, y, classes = make_shapes(args.samples + args.test_samples, size=args.size, seed=args.seed,
                                centered=args.centered, noise=args.noise)
    X = X.reshape(len(X), -1).astype(np.float32)
    Xtr, ytr, Xte, yte = X[:args.samples], y[:args.samples], X[args.samples:], y[args.samples:]
    d = X.shape[1]
    model = fm.Sequential([fm.Dense(d, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"),
                           fm.ReLU(), fm.Dense(256, len(classes))],
                          loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(lr=args.lr, momentum=0.9),
                          device=args.device, seed=args.seed)
    model.summary(batch_size=min(args.batch_size or args.samples, args.samples))
    t0 = time.perf_counter()
    h = model.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, test_data=(Xte, yte),
                  verbose=args.verbose)
    seconds = time.perf_counter() - t0
    test = model.evaluate(Xte, yte)
    sps = args.samples * len(h.epoch) / seconds
    print(f"classes: {', '.join(classes)}")
    print(f"{len(h.epoch)} epochs in {seconds:.2f} s ({sps:,.0f} samples/s, JIT warm-up included)")
    print(f"train_acc={h['accuracy'][-1]:.3f} test_acc={test['accuracy']:.3f} "
          f"samples_per_s={sps:.0f} seconds={seconds:.2f}")
    return 0


def add(sub):
    d = sub.add_parser("demo", help="train on the built-in shapes (no download): accuracy and speed",
                       description=options.plain(run.__doc__), formatter_class=options.Formatter)
    d.add_argument("--samples", type=options.positive_int, default=8000, help="training images")
    d.add_argument("--test-samples", type=options.positive_int, default=2000, help="test images (never trained on)")
    d.add_argument("--size", type=options.side, default=28, help="image side in pixels")
    d.add_argument("--noise", type=options.number(0, 1), default=0.25, help="std of the Gaussian noise on the pixels")
    d.add_argument("--centered", action="store_true", help="every shape in the centre (an easy task: "
                   "solved in one epoch)")
    d.add_argument("--epochs", type=options.positive_int, default=8, help="passes over the training images")
    d.add_argument("--batch-size", type=options.batch_size, default=128, help="an int, or 'full'")
    d.add_argument("--lr", type=options.number(0, 10, lo_open=True), default=0.05, help="SGD learning rate "
                   "(momentum 0.9)")
    d.add_argument("--seed", type=int, default=0, help="of the images and the model")
    d.add_argument("--verbose", type=options.verbose, default="auto", choices=("auto", 0, 1, 2),
                   help="auto: a bar redrawn per batch on a terminal, else a line an epoch")
    d.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to train")
    d.set_defaults(func=run)
