"""The files of a run folder (``fastmlp train --out DIR``): the model, its preprocessing,
the metrics and the curves."""
import json
from pathlib import Path

from .errors import CommandError


MODEL_FILE = "model.fmlp"
PREPROCESS_FILE = "preprocess.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


def atomic_text(path, text):
    from ..atomic import atomic_write
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def model_paths(where):
    p = Path(where)
    model = p / MODEL_FILE if p.is_dir() else p
    if not model.is_file():
        raise CommandError(f"model not found: {model} (pass the --out folder of 'fastmlp train' or its "
                           f"{MODEL_FILE})")
    prep = model.parent / PREPROCESS_FILE
    if not prep.is_file():
        raise CommandError(f"{PREPROCESS_FILE} not found beside {model}: it records how images are "
                           "scaled and shaped for this model ('fastmlp train --out DIR' writes it)")
    return model, prep


def load_model(where, device):
    import fastmlp as fm
    model_path, prep_path = model_paths(where)
    model = fm.load_model(model_path, device=device)
    prep = json.loads(prep_path.read_text(encoding="utf-8"))
    return model, prep
