"""A training step replayed as one CUDA graph: ~25 launches for the price of one.

On small networks the GPU finishes each kernel of a step in a few microseconds,
and the step's time is the host's: Python, argument checks and one launch per
op. A CUDA graph records the step's launches once and replays them with one
call. ``Sequential.fit`` uses one (the backend's ``step_graphs()``) on
``device="cuda"`` when a step is a fixed sequence of launches on fixed buffers
with fixed scalar arguments: SGD or Adam (Adam's step count, which changes,
lives in device memory and is incremented by a launch of the step), no
host-drawn randomness (Dropout, Augment), data already on the device. Anything
else runs eagerly.

``StepGraphs.run(key, step)``:
  1st call for a key: runs ``step`` eagerly on the capture stream, so that
      every workspace it needs (and CuPy's per-stream ones) exists;
  2nd call: captures ``step`` on that stream into a graph and launches it;
  later calls: launch the graph.
Graphs launch on the caller's current stream, so they stay ordered with the
eager ops around them (stats reset, host reads). Memory allocation is refused
while capturing (a graph must not hold a pointer that is later freed): a step
that allocates, or any failure during capture, switches graphs off for this
object, with the reason in ``disabled``, and the step runs eagerly. The
buffers of the step are kept alive by ``keep`` for as long as the graphs are.
"""
import cupy


class _Refused(RuntimeError):
    pass


def _refuse_allocation(size):
    raise _Refused(f"a step allocated {size} bytes of device memory while being captured")


class StepGraphs:
    def __init__(self):
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._graphs = {}
        self._warm = set()
        self.disabled = None       # why graphs are off, once they are
        self.captured = 0          # graphs made
        self.replays = 0           # graph launches
        self.keep = []             # arrays the graphs point into

    def run(self, key, step):
        graph = self._graphs.get(key)
        if graph is not None:
            graph.launch()
            self.replays += 1
            return
        if self.disabled is not None:
            step()
            return
        if key not in self._warm:
            self._on_capture_stream(step)
            self._warm.add(key)
            return
        graph = self._capture(step)
        if graph is None:
            step()
            return
        self._graphs[key] = graph
        self.captured += 1
        graph.launch()
        self.replays += 1

    def _on_capture_stream(self, fn):
        """fn() on the capture stream, ordered after and before the current stream's work."""
        current = cupy.cuda.get_current_stream()
        self._stream.wait_event(current.record())
        with self._stream:
            fn()
        current.wait_event(self._stream.record())

    def _capture(self, step):
        allocator = cupy.cuda.get_allocator()
        stream = self._stream
        try:
            with stream:
                stream.begin_capture()
                try:
                    cupy.cuda.set_allocator(_refuse_allocation)
                    try:
                        step()
                    finally:
                        cupy.cuda.set_allocator(allocator)
                except BaseException:
                    try:
                        stream.end_capture()
                    except Exception:
                        pass
                    raise
                return stream.end_capture()
        except Exception as e:  # noqa: BLE001 -- any failure: run eagerly from now on
            self.disabled = f"{type(e).__name__}: {e}"
            return None
