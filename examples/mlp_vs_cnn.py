"""MLP against CNN as images grow: parameters, FLOPs, memory, throughput and accuracy.

The first write-up flattens 1000 x 1000 images into a dense network; the third
trains a 2 x 256 MLP and a small CNN on 28 x 28 slices. This script puts them
side by side for square images of side 28, 64 and 128 (and, analytically,
1000): the MLP's first layer grows with the pixel count, the CNN's
convolutions do not (only its Flatten -> dense layer does, unless the map is
pooled globally), while the CNN's FLOPs and activations grow with the pixels.

Then both are trained. With ``--data`` (the MNIST t10k folder) on MNIST; else
on the built-in shapes, trained on centred objects and tested on shifted ones,
where a CNN with global pooling and fewer parameters generalises and the MLP
does not.

    python examples/mlp_vs_cnn.py [--data ../shared/data/mnist-t10k] [--sizes 28,64,128]
                                  [--json out.json] [--plot out.png] [--device cpu] [--quick]

The last line is ``mlp_test_acc=... cnn_test_acc=... mlp_params=... cnn_params=...
mlp_train_sps=... cnn_train_sps=...`` (shapes: the accuracy on shifted objects).
"""
import argparse
import sys

import fastmlp as fm
from fastmlp.compare import key_values, plot, table, write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, metavar="DIR", help="MNIST t10k folder (default: built-in shapes)")
    p.add_argument("--sizes", default="28,64,128", help="image sides to build and time")
    p.add_argument("--epochs", type=int, default=None, help="override the per-model epochs")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--plot", default=None, metavar="FILE")
    p.add_argument("--quick", action="store_true", help="short timings, little data: a smoke test")
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))

    result = fm.compare(sizes=sizes, device=args.device, data=args.data, epochs=args.epochs,
                        quick=args.quick, log=lambda line: print(line, flush=True))
    print()
    print(table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            print(f"wrote {plot(result, args.plot)}")
        except ImportError as e:
            print(f"no plot: {e}")
    print(key_values(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
