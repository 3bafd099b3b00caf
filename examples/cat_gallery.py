"""The first write-up's figure: the cat model's test predictions as a gallery.

Trains the 4-layer cat / non-cat model of ``cat_vs_noncat.py`` (layers
[12288, 20, 7, 5, 1], ReLU, sigmoid output, full-batch gradient descent at
lr 0.0075, course initialisation, seed 1; 2,500 iterations by default, the
course's run) or loads one saved with ``model.save`` (``--model``), predicts
the 50 test images and writes the gallery: correct cats as they are,
correct non-cats faded, mistakes tinted red with their true class, the test
accuracy in the title.

    python examples/cat_gallery.py [--data DIR] [--iterations 2500] [--model cat.fmlp] [--out cat_gallery.png]
"""
import argparse
import os
import sys
import time

import fastmlp as fm
from fastmlp.data import load_h5

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cat_vs_noncat import FILES, build, find_data  # noqa: E402  (the same model and data lookup)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with train_catvnoncat.h5 and test_catvnoncat.h5")
    p.add_argument("--model", help="a model file from model.save to use instead of training")
    p.add_argument("--save", help="write the trained model here (model.save)")
    p.add_argument("--iterations", type=int, default=2500)
    p.add_argument("--hidden", default="20,7,5", help="hidden layer sizes (default: the article's)")
    p.add_argument("--lr", type=float, default=0.0075)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--init", default="course", help="course, he, glorot or lecun")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="cat_gallery.png", help="the gallery PNG")
    args = p.parse_args(argv)

    root = find_data(args.data)
    X_train, y_train, classes = load_h5(root / FILES[0])
    X_test_img, y_test, _ = load_h5(root / FILES[1])
    X_train = X_train.reshape(len(X_train), -1).astype(args.dtype) / 255
    X_test = X_test_img.reshape(len(X_test_img), -1).astype(args.dtype) / 255

    t0 = time.perf_counter()
    if args.model:
        model = fm.load_model(args.model, device=args.device)
        if model.input_shape != (X_test.shape[1],):
            sys.exit(f"expected a model of 12288 inputs (64x64x3 images), got input shape {model.input_shape} "
                     f"in {args.model}")
        print(f"loaded {args.model}")
    else:
        model = build(args)
        model.fit(X_train, y_train, epochs=args.iterations, batch_size=None, verbose=0)
        print(f"trained {args.iterations} iterations in {time.perf_counter() - t0:.1f} s")
        if args.save:
            model.save(args.save)
            print(f"saved {args.save}")
    seconds = time.perf_counter() - t0
    train_acc = model.evaluate(X_train, y_train)["accuracy"]
    y_pred = model.predict_classes(X_test)
    test_acc = float((y_pred == y_test).mean())
    wrong = int((y_pred != y_test).sum())
    from fastmlp import plot
    plot.gallery(X_test_img, y_test, y_pred, args.out, classes=classes,
                 title="Cat / non-cat test set, " + (os.path.basename(args.model) if args.model
                                                      else f"{args.iterations} iterations"))
    print(f"train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}, {wrong} of {len(y_test)} test "
          f"images misclassified; gallery: {args.out}")
    print(f"train_acc={train_acc:.3f} test_acc={test_acc:.3f} misclassified={wrong} seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
