"""The PyTorch peer: nn.Sequential of Linear/ReLU trained with torch.optim.SGD.

Written as a PyTorch user would: BCEWithLogitsLoss or CrossEntropyLoss,
`opt.zero_grad(); loss.backward(); opt.step()`, mini-batches gathered with
`X[idx]` from a per-epoch `torch.randperm`. The loss is summed on the device
and read once per epoch (so on CUDA nothing in the loop waits for the host,
like fastmlp). PyTorch is an optional dependency (`pip install fastmlp[peers]`):
`load_torch` imports it lazily and says why when it cannot.

Shape vocabulary: N batch, D inputs of a layer, M outputs, C classes.
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

    def set_weights(self, weights):
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        with self.torch.no_grad():
            for lin, W, b in zip(linears, weights[0::2], weights[1::2]):
                lin.weight.copy_(self.torch.as_tensor(np.ascontiguousarray(W.T)))
                lin.bias.copy_(self.torch.as_tensor(b))

    def get_weights(self):
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        out = []
        for lin in linears:
            out += [lin.weight.detach().cpu().numpy().T.copy(),
                    lin.bias.detach().cpu().numpy().copy()]
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
