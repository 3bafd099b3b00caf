"""The summary table and the memory report of a model.

Each layer reports the bytes of its own workspaces (``Layer.workspace_nbytes``);
the backend reports the scratch its reductions keep per width
(``reduction_scratch_nbytes``); the flat buffers report their own sizes.
"""
import numpy as np

from .conv import Conv2D
from .layers import Dense
from .losses import SoftmaxCrossEntropy
from .normalization import BatchNorm
from .validation import check_batch_size


def memory_report(model, batch_size=32):
    """See ``Sequential.memory_report``."""
    n = check_batch_size(batch_size)
    if n is None:
        raise ValueError("expected batch_size to be an int >= 1, got None")
    item = np.dtype(model.dtype).itemsize
    flat = model.flat.size * item
    work = sum(int(layer.workspace_nbytes(n)) for layer in model.layers)
    per_out = int(np.prod(model.output_shape))
    target = n * 8 if isinstance(model.loss, SoftmaxCrossEntropy) else n * per_out * item
    batch = n * int(np.prod(model.input_shape)) * item + target + n * per_out * item
    scratch = int(model.stats.nbytes) + model.flat.nbytes()
    scratch += sum(model.be.reduction_scratch_nbytes(w) for w in _reduction_widths(model.layers))
    report = {"batch_size": n, "parameters": flat, "gradients": flat, "undo": flat,
              "optimizer_state": flat * len(model.flat.state), "workspaces": work,
              "batch": batch, "scratch": scratch}
    report["total"] = sum(v for k, v in report.items() if k != "batch_size")
    return report


def _reduction_widths(layers):
    # the widths of the bias-gradient style reductions a step runs (their scratch is per width)
    widths = {layer.out_features for layer in layers if isinstance(layer, Dense)}
    widths |= {w * layer.features for layer in layers if isinstance(layer, BatchNorm) for w in (1, 2)}
    widths |= {layer.out_channels for layer in layers          # fused conv epilogues
               if isinstance(layer, Conv2D) and layer.pool is not None}
    return widths


def summary(model, print_fn=print, batch_size=32):
    """See ``Sequential.summary``."""
    rows = [("Layer", "Output shape", "Params")]
    for i, layer in enumerate(model.layers):
        n = sum(int(np.prod(s.shape)) for s in layer.param_specs())
        name = repr(layer) + (" (fused)" if getattr(layer, "fused", False) else "")
        shape = str((None,) + tuple(layer.output_shape)) if model.built else "?"
        rows.append((f"{i}: {name}", shape, f"{n:,}"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    line = "-" * (sum(widths) + 4)
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    memory = _memory_line(model, batch_size) if model.built else \
        "Training memory: known once the input shape is (pass input_shape= or call fit/predict)"
    loss = repr(model.loss) if model.loss is not None else "none (predict only; fit needs one)"
    text = "\n".join([fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [
        line, f"Total params: {model.count_params():,}",
        f"Loss: {loss}  Optimizer: {model.optimizer!r}  Device: {model.device}  "
        f"dtype: {np.dtype(model.dtype).name}", memory])
    if print_fn is not None:
        print_fn(text)
    return text


def _memory_line(model, batch_size):
    r = memory_report(model, batch_size)
    state = r["parameters"] + r["gradients"] + r["undo"] + r["optimizer_state"]
    return (f"Training memory at batch_size={r['batch_size']}: {_mib(r['total'])} "
            f"(parameters, gradients, optimizer state {_mib(state)}; "
            f"workspaces and batch {_mib(r['workspaces'] + r['batch'] + r['scratch'])})")


def _mib(nbytes):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes} B"
