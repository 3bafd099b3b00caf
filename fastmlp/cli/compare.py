"""``fastmlp compare``: MLP against CNN as images grow (fastmlp/compare.py), or on photos
(fastmlp/photo_compare.py)."""
import argparse
from pathlib import Path

from . import options
from .errors import CommandError


def _sides(text):
    """'28,64,128' -> (28, 64, 128); each an image side >= 8."""
    try:
        sides = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sides = ()
    if not sides or min(sides) < 8:
        raise argparse.ArgumentTypeError(f"expected comma-separated image sides >= 8 like 28,64,128, "
                                         f"got {text!r}")
    return sides


def run(args):
    """MLP against CNN on square images of each side: parameters, FLOPs and activation
    memory per sample (analytic, also for 1000x1000), forward and training samples/s
    (measured), then test accuracy of both trained: on MNIST t10k with --data, else on
    the built-in shapes, trained centred and tested shifted (translation sensitivity).
    On a shared machine, OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 give steadier timings:
    a second thread that waits for its core stalls a whole GEMM."""
    import fastmlp as fm
    from ..compare import key_values, plot, table, write_json
    for opt in ("json", "plot", "gallery"):
        target = getattr(args, opt)
        if target is not None and not Path(target).resolve().parent.is_dir():
            raise CommandError(f"--{opt}: folder not found for {target}")
    from ..photo_compare import is_photo_folder, run_from_cli
    if args.data is not None and is_photo_folder(args.data):
        return run_from_cli(args)
    result = fm.compare(sizes=args.sizes, device=args.device, batch_size=args.batch_size, data=args.data,
                        epochs=args.epochs, seed=args.seed, train=not args.no_train, quick=args.quick,
                        analytic_sizes=args.analytic_sizes,
                        log=lambda line: print(line, flush=True))
    print()
    print(table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot(result, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as e:
            print(f"no plot: {e}")
    print(key_values(result))
    return 0


def add(sub):
    c = sub.add_parser("compare", help="MLP vs CNN as images grow: parameters, FLOPs, memory, "
                       "samples/s, accuracy", description=options.plain(run.__doc__), formatter_class=options.Formatter)
    c.add_argument("--sizes", type=_sides, default="28,64,128", metavar="S,S,...",
                   help="image sides to build and time")
    c.add_argument("--analytic-sizes", type=_sides, default="1000", metavar="S,S,...",
                   help="image sides given the analytic columns only")
    c.add_argument("--data", default=None, metavar="DIR",
                   help="the MNIST t10k folder: train and test on it (first 8,000 / last 2,000); a folder of "
                        "photos (train/ and test/ of class sub-folders, e.g. dogs-vs-cats): the write-up's dense "
                        "network against a small CNN over --seeds; default: the built-in shapes, trained "
                        "centred, tested shifted")
    c.add_argument("--seeds", default="0,1,2", metavar="S,S,...", help="photos: one run per model and seed")
    c.add_argument("--gallery", default=None, metavar="FILE", help="photos: a PNG of test photos under the "
                   "first seed's CNN, mistakes tinted red")
    c.add_argument("--epochs", type=options.positive_int, default=None,
                   help="epochs of every trained model (default: per model, see fastmlp.compare.RECIPES)")
    c.add_argument("--batch-size", type=options.positive_int, default=64)
    c.add_argument("--no-train", action="store_true", help="the table only, no accuracy part")
    c.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    c.add_argument("--plot", default=None, metavar="FILE",
                   help="write a PNG of parameters and samples/s against the side (needs matplotlib)")
    c.add_argument("--quick", action="store_true",
                   help="short timings, a fraction of the data and of the epochs (a smoke test)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    c.set_defaults(func=run)
