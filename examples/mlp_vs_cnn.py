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

It runs ``fastmlp compare`` with the same options (``fastmlp compare --help``).

The last line is ``mlp_test_acc=... cnn_test_acc=... mlp_params=... cnn_params=...
mlp_train_sps=... cnn_train_sps=...`` (shapes: the accuracy on shifted objects).
"""
import sys

from fastmlp.cli import main as fastmlp_main


def main(argv=None):
    # the same run as ``fastmlp compare`` (fastmlp/cli/compare.py), which takes every option above
    return fastmlp_main(["compare"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
