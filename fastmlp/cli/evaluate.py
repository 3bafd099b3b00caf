"""``fastmlp evaluate``: loss and accuracy of a saved model on a data source."""
from . import options, runs, sources


def run(args):
    """Loss and accuracy of a saved model (a --out folder of train) on DATA: the test
    split of a MedMNIST .npz or MNIST t10k folder, else all of the file or folder."""
    model, prep = runs.load_model(args.model, args.device)
    args.image_size = args.image_size or prep["image_shape"][0]
    args.color = not prep.get("grayscale", True)
    src = sources.load_source(args.data, args, for_training=False)
    X_img, y = src["test"]
    if args.max_samples:
        X_img, y = X_img[:args.max_samples], y[:args.max_samples]
    X = sources.prepare(X_img, prep)
    res = model.evaluate(X, sources.targets(y, prep))
    print(f"{args.data}: {len(X)} samples, loss {res['loss']:.4f}, accuracy {res['accuracy']:.4f}")
    print(f"loss={res['loss']:.6f} accuracy={res['accuracy']:.6f} n={len(X)}")
    return 0


def add(sub):
    e = sub.add_parser("evaluate", help="loss and accuracy of a saved model", description=options.plain(run.__doc__),
                       formatter_class=options.Formatter)
    e.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {runs.MODEL_FILE})")
    e.add_argument("data", help="a data source, as for train")
    options.add_data_options(e, seed=1, seed_help="shapes: the seed of the images drawn (train draws with 0)")
    e.set_defaults(func=run)
