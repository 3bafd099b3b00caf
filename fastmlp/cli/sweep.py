"""``fastmlp sweep``: the configurations x seeds of a TOML file (fastmlp/sweep.py)."""
from pathlib import Path

from . import options
from .errors import CommandError


def run(args):
    """Run the configurations x seeds of a sweep file (TOML: [base], [grid], [[config]], seeds,
    out) in worker processes, or on a Dask cluster with --scheduler; a Markdown table, a plot,
    results.csv / results.json in the output folder (a sweep started again skips finished rows)."""
    from ..sweep import load_toml, sweep
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"sweep file not found: {path} (expected a TOML file; see 'fastmlp sweep --help')")
    spec = load_toml(path)
    out = args.out or spec["out"] or str(path.with_suffix("")) + "-results"
    rows = sweep(spec["configs"], spec["seeds"], base=spec["base"], workers=args.workers or spec["workers"],
                 scheduler=args.scheduler or spec["scheduler"], out=out, retry_failed=args.retry_failed)
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def add(sub):
    s = sub.add_parser("sweep", help="configurations x seeds in worker processes or on a Dask cluster",
                       description=options.plain(run.__doc__), formatter_class=options.Formatter)
    s.add_argument("file", metavar="FILE.toml", help="the sweep: [base], [grid], [[config]], seeds, out")
    s.add_argument("--workers", type=options.positive_int, default=None, help="local worker processes (default: CPUs)")
    s.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="a Dask scheduler (tcp://HOST:8786) to run on instead of local workers")
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default: the file's out, "
                   "else FILE-results)")
    s.add_argument("--retry-failed", action="store_true", help="run again the rows that failed last time")
    s.set_defaults(func=run)
