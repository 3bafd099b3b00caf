"""The PyTorch peers: nn.Sequential of Linear/ReLU (TorchMLP) or of
Conv2d/ReLU/MaxPool2d/Flatten/Linear (TorchCNN), trained with torch.optim.SGD;
the MLP's whole step also under torch.compile (TorchCompiledMLP) and, on a CUDA
device, captured as CUDA graphs (TorchCudaGraphMLP).

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


class TorchCompiledMLP(TorchMLP):
    """TorchMLP with its whole training step under one `torch.compile`.

    The compiled function holds the gather of the batch from the device-resident
    X by the index tensor, `zero_grad`, forward, loss, `backward` and `opt.step`,
    as the PyTorch docs write a compiled training step. Dynamo splits it where it
    cannot trace (zero_grad, the call of backward: AOTAutograd compiles the
    backward graph of the forward, and the optimizer step is a graph of its own);
    `graphs()` says how it was split. Shapes are static (dynamic=False): the short
    last batch of an epoch compiles its own graphs once, in the warm-up. torch.compile
    needs a C++ compiler on the CPU; a failure surfaces at the first step."""

    def __init__(self, torch, weights, loss, lr, dtype="float32", device="cpu"):
        super().__init__(torch, weights, loss, lr, dtype, device)
        import torch._dynamo
        # every model instance and batch shape is a recompile of the same code:
        # the default limit (8) would silently fall back to eager mid-run
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        model, loss_fn, opt = self.model, self.loss_fn, self.opt

        def train_step(x, t, idx):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), t[idx])
            loss.backward()
            opt.step()
            return loss.detach()

        self._compiled = torch.compile(train_step, dynamic=False)

    def step(self, x, t):
        idx = self.torch.arange(x.shape[0], device=self.device)
        return self._compiled(x, t, idx)

    def fit(self, x, t, epochs, batch_size=None, generator=None):
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
                total += self._compiled(x, t, idx) * len(idx)
            history.append(total.item() / n)
        return history

    @staticmethod
    def graphs():
        """'G graphs, B graph breaks' compiled so far in this process (Dynamo's counters)."""
        from torch._dynamo.utils import counters
        return (f"{counters['stats'].get('unique_graphs', 0)} graphs, "
                f"{sum(counters['graph_break'].values())} graph breaks")


class TorchCudaGraphMLP(TorchMLP):
    """TorchMLP with its whole training step captured as one CUDA graph.

    The "whole network capture" recipe of the PyTorch docs (CUDA semantics, CUDA
    graphs): a few warm-up steps on a side stream, then forward, loss, backward
    and `opt.step()` captured once per batch shape into a `torch.cuda.CUDAGraph`,
    with static inputs. Here the static input is the index tensor of the batch:
    the gather `x[idx]` from the device-resident X is inside the graph, and so is
    the on-device sum of the loss; a step is `idx.copy_(...)` and `replay()`.
    torch.optim.SGD keeps no step count on the host, so it needs no capturable
    flag. The warm-up steps change the weights; they are put back after capture
    (copied in place: the graphs keep their addresses). CUDA only."""

    def __init__(self, torch, weights, loss, lr, dtype="float32", device="cuda"):
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; torch sees none")
        super().__init__(torch, weights, loss, lr, dtype, device)
        self._graphs = {}        # (id of x, batch size) -> (graph, static idx, static total)

    def _graph(self, x, t, size):
        key = (x.data_ptr(), size)
        if key in self._graphs:
            return self._graphs[key]
        torch = self.torch
        idx = torch.arange(size, device=self.device)
        total = torch.zeros((), device=self.device, dtype=self.dtype)
        before = self.get_weights()

        def train_step():
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x[idx]), t[idx])
            loss.backward()
            self.opt.step()
            total.add_(loss.detach() * size)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                train_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            train_step()
        torch.cuda.synchronize()
        self.set_weights(before)   # undo the warm-up steps, in place
        self._graphs[key] = (graph, idx, total)
        return self._graphs[key]

    def step(self, x, t):
        graph, idx, total = self._graph(x, t, x.shape[0])
        total.zero_()
        graph.replay()
        return total / x.shape[0]

    def fit(self, x, t, epochs, batch_size=None, generator=None):
        torch = self.torch
        n = x.shape[0]
        b = n if batch_size is None or batch_size >= n else batch_size
        graphs = {size: self._graph(x, t, size) for size in {b, n - (n // b) * b} if size}
        history = []
        for _ in range(epochs):
            perm = (torch.randperm(n, generator=generator).to(self.device) if b < n
                    else torch.arange(n, device=self.device))
            for _, _, total in graphs.values():
                total.zero_()
            for start in range(0, n, b):
                graph, idx, _ = graphs[min(b, n - start)]
                idx.copy_(perm[start:start + b])
                graph.replay()
            history.append(sum(tot.item() for _, _, tot in graphs.values()) / n)
        return history
