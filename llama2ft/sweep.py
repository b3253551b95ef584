"""llama2ft-sweep-summary: rebuild the summary of a sweep folder (one row per run, best first).

`llama2ft-train -m ...` rewrites `sweep_summary.csv` and `sweep_summary.md` at the sweep root after
every run; `llama2ft-sweep-summary DIR` rebuilds them for any sweep folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from llama2ft.training.sweeps import DIRECTIONS, write


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="llama2ft-sweep-summary", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (hydra.sweep.dir)")
    parser.add_argument("--objective", default="eval_loss", help="metric to sort by")
    parser.add_argument("--direction", default="minimize", choices=sorted(DIRECTIONS),
                        help="minimize (losses) or maximize (rewards, accuracies)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    write(args.sweep_dir, args.objective, args.direction)
    print((args.sweep_dir / "sweep_summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
