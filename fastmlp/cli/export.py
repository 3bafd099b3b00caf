"""``fastmlp export``: a saved model as an ONNX file."""
import os
from pathlib import Path

from . import options, runs
from .errors import CommandError


def run(args):
    """Write a saved model (a --out folder of train, or any file of model.save) as an
    ONNX file: the graph of predict (probabilities, or --output logits), batch size dynamic."""
    import numpy as np

    import fastmlp as fm
    from ..export_onnx import export_onnx
    p = Path(args.model)
    model_path = p / runs.MODEL_FILE if p.is_dir() else p
    if not model_path.is_file():
        raise CommandError(f"model not found: {model_path} (pass the --out folder of 'fastmlp train' "
                           f"or a file written by model.save)")
    model = fm.load_model(model_path, device="cpu")
    export_onnx(model, args.out, output=args.output, opset=args.opset)
    shape = "x".join(map(str, ("N", *model.input_shape)))
    print(f"wrote {args.out}: input {shape} {np.dtype(model.dtype).name}, output {args.output}, opset {args.opset}")
    print(f"onnx={args.out} output={args.output} opset={args.opset} input_shape={shape} "
          f"bytes={os.path.getsize(args.out)}")
    return 0


def add(sub):
    x = sub.add_parser("export", help="write a saved model as an ONNX file", description=options.plain(run.__doc__),
                       formatter_class=options.Formatter)
    x.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {runs.MODEL_FILE})")
    x.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    x.add_argument("--output", default="probabilities", choices=("probabilities", "logits"),
                   help="what the graph outputs: predict's probabilities or the last layer's logits")
    x.add_argument("--opset", type=options.positive_int, default=17, help="the ONNX opset (at least 13)")
    x.set_defaults(func=run)
