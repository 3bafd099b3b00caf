"""The fastmlp command line (fastmlp --help, fastmlp COMMAND --help).

    fastmlp demo                          train on the built-in shapes (no download)
    fastmlp train DATA --out run          train a CNN (images) or an MLP (--model mlp, --hidden ...)
                                          or any stack (--model FILE.toml); model, metrics,
                                          curves in run/ (under mpiexec -n P: data-parallel)
    fastmlp evaluate run DATA             loss and accuracy of a saved model
    fastmlp predict run IMAGE... | DATA   class and probability of image files, or of a data
                                          set (with its accuracy)
    fastmlp export run OUT.onnx           the model as an ONNX file (--output logits)
    fastmlp info                          versions, devices, threads, BLAS, Numba cache
    fastmlp compare [--data DIR]          MLP vs CNN as images grow: parameters, FLOPs,
                                          memory, samples/s, accuracy
    fastmlp sweep FILE.toml [--workers N] configurations x seeds in worker processes
                                          (--scheduler tcp://HOST:8786: on Dask)

DATA is an HDF5 file (--x-key / --y-key name its datasets where they cannot be
guessed), a MedMNIST .npz, a folder of MNIST IDX files (the t10k pair), a folder
of class sub-folders of JPG/PNG images, or 'shapes' for the built-in set.
Commands that report a result end with one machine-readable key=value line.
"""
import argparse
import sys

from . import compare, demo, evaluate, export, info, predict, sweep, train
from .errors import INTERRUPTED, CommandError

# One file a job: each command is a module with ``add(sub)``, its parser (which sets
# func=run), and ``run(args)``, what it does; options.py holds the argument types and shared
# help, sources.py reads data sources, runs.py a run folder's files, errors.py what a command
# reports without a traceback.

# The subcommands, in --help order. A new one is a module with add(sub) and run(args),
# appended here.
COMMANDS = [demo, train, evaluate, predict, export, info, compare, sweep]


def build_parser():
    p = argparse.ArgumentParser(prog="fastmlp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return p


def _world():
    """The data-parallel world this command joined (fastmlp.distributed.init), if larger than one."""
    from ..distributed import comm
    world = comm.joined()
    return world if world is not None and world.size > 1 else None


def main(argv=None):
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (CommandError, FileNotFoundError, ValueError, ImportError, FloatingPointError) as e:
        # bad data or files, a diverged run: say what, without a traceback (bugs still show theirs)
        world = _world()
        if world is None or world.is_root or not getattr(e, "collective", False):
            rank = "" if world is None else f" (rank {world.rank} of {world.size})"
            print(f"fastmlp {args.command}: error{rank}: {e}", file=sys.stderr)
        if world is not None:   # the other ranks may wait in a collective: end them all
            sys.stderr.flush()
            from ..distributed.faults import end_world
            end_world(world, 1)   # after a pause: the launcher forwards the message first
        return 1
    except KeyboardInterrupt:   # Ctrl-C outside training (train handles its own)
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
