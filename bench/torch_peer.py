"""The PyTorch peers: nn.Sequential of Linear/ReLU (TorchMLP) or of
Conv2d/ReLU/MaxPool2d/Flatten/Linear (TorchCNN), trained with torch.optim.SGD.

Written as a PyTorch user would: BCEWithLogitsLoss or CrossEntropyLoss,
`opt.zero_grad(); loss.backward(); opt.step()`, mini-batches gathered with
`X[idx]` from a per-epoch `torch.randperm`. The loss is summed on the device
and read once per epoch (so on CUDA nothing in the loop waits for the host,
like fastmlp). PyTorch is an optional dependency (`pip install fastmlp[peers]`):
`load_torch` imports it lazily and says why when it cannot.

Shape vocabulary: N batch, D inputs of a layer, M outputs, C classes (or, for
images, channels), H, W image height and width, K kernel side.
"""
import numpy as np


def load_torch(threads=None):
    """Return (torch module, None), or (None, 'skipped: <reason>')."""
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install
        return None, f"skipped: torch not importable ({exc}); pip install fastmlp[peers]"
    if threads is not None:
        torch.set_num_threads(threads)
    return torch, None


class TorchMLP:
    """Dense layers with ReLU between them; the last layer gives logits.

    weights: [W0, b0, W1, b1, ...] with W (D, M) and b (M,) in the Keras /
    fastmlp layout; nn.Linear keeps W.T (M, D), so they are transposed here.
    loss: "bce" (labels (N, 1) of 0/1) or "softmax_xent" (integer labels (N,))."""

    def __init__(self, torch, weights, loss, lr, dtype="float32", device="cpu"):
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        nn = torch.nn
        layers = []
        for W in weights[0::2]:
            layers += [nn.Linear(W.shape[0], W.shape[1]), nn.ReLU()]
        self.model = nn.Sequential(*layers[:-1]).to(self.device, self.dtype)
        self.set_weights(weights)
        self.loss_fn = nn.BCEWithLogitsLoss() if loss == "bce" else nn.CrossEntropyLoss()
        self.loss = loss
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)

    def _weighted(self):
        nn = self.torch.nn
        return [m for m in self.model if isinstance(m, (nn.Linear, nn.Conv2d))]

    def set_weights(self, weights):
        # Linear keeps W.T (M, D); Conv2d's (M, C, K, K) is fastmlp's layout already
        with self.torch.no_grad():
            for mod, W, b in zip(self._weighted(), weights[0::2], weights[1::2]):
                W = W.T if isinstance(mod, self.torch.nn.Linear) else W
                mod.weight.copy_(self.torch.as_tensor(np.ascontiguousarray(W)))
                mod.bias.copy_(self.torch.as_tensor(b))

    def get_weights(self):
        out = []
        for mod in self._weighted():
            W = mod.weight.detach().cpu().numpy()
            out += [(W.T if isinstance(mod, self.torch.nn.Linear) else W).copy(),
                    mod.bias.detach().cpu().numpy().copy()]
        return out

    def to_tensors(self, X, y):
        """Host arrays to device tensors once, before timing."""
        x = self.torch.as_tensor(X).to(self.device, self.dtype)
        if self.loss == "bce":
            t = self.torch.as_tensor(y).to(self.device, self.dtype).reshape(-1, 1)
        else:
            t = self.torch.as_tensor(y).to(self.device, self.torch.int64)
        return x, t

    def step(self, x, t):
        """One SGD step on the batch; returns the loss before it, on the device."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), t)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def fit(self, x, t, epochs, batch_size=None, generator=None):
        """Train on device tensors (from to_tensors); same batch schedule as
        NumpyMLP.fit. Returns the mean loss per epoch."""
        torch = self.torch
        self.model.train()
        n = x.shape[0]
        history = []
        for _ in range(epochs):
            if batch_size is None or batch_size >= n:
                history.append(self.step(x, t).item())
                continue
            perm = torch.randperm(n, generator=generator).to(self.device)
            total = torch.zeros((), device=self.device, dtype=self.dtype)
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                total += self.step(x[idx], t[idx]) * len(idx)
            history.append(total.item() / n)
        return history


class TorchCNN(TorchMLP):
    """A CNN from a layer list, as a PyTorch user writes it: nn.Conv2d (oneDNN on
    the CPU), nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear; softmax cross-entropy.

    layers: tuples ("conv", C, M, K, padding), ("relu",), ("pool", K),
    ("flatten",), ("dense", D, M), as bench/flops.py counts them.
    weights: [W0, b0, ...] for the conv and dense layers in order; conv W is
    (M, C, K, K) as in torch and fastmlp, dense W is (D, M) (fastmlp / Keras)."""

    def __init__(self, torch, layers, weights, lr, dtype="float32", device="cpu"):
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        nn = torch.nn
        mods = []
        for op, *a in layers:
            if op == "conv":
                mods.append(nn.Conv2d(a[0], a[1], a[2], padding=a[3]))
            elif op == "dense":
                mods.append(nn.Linear(a[0], a[1]))
            elif op == "relu":
                mods.append(nn.ReLU())
            elif op == "pool":
                mods.append(nn.MaxPool2d(a[0]))
            elif op == "flatten":
                mods.append(nn.Flatten())
            else:
                raise ValueError(f"unknown layer {op!r}")
        self.model = nn.Sequential(*mods).to(self.device, self.dtype)
        self.set_weights(weights)
        self.loss_fn = nn.CrossEntropyLoss()
        self.loss = "softmax_xent"
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
