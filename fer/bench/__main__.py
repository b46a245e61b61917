"""``python -m fer.bench``: training and inference throughput of the seed's pipeline against fer's, on the
same images. The rows live in ``fer.bench.training`` and ``fer.bench.inference``; the harness (budgets,
memory, the table) in ``fer.bench.harness``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

import fer.bench.inference
import fer.bench.serving
import fer.bench.tables
import fer.bench.training  # noqa: F401  (registers the rows)
from fer.bench.data import default_data_dir, default_out_file, ensure_jpeg_tree
from fer.bench.harness import (
    CUDA_FULL_BUDGET,
    CUDA_QUICK_BUDGET,
    FULL_BUDGET,
    QUICK_BUDGET,
    BenchContext,
    _progress,
    _reset_peak_memory,
    display_path,
    format_table,
    make_header,
    results_json,
    run_row,
    select_rows,
)
from fer.data.sources import ImageFolders
from fer.errors import FERError
from fer.files import check_output_file
from fer.run.cli import command
from fer.run.process import quiet_known_warnings, tune_cpu_allocator
from fer.workers import available_cores


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.bench",
        description="Training throughput of the seed's pipeline against fer's, on the same images.",
    )
    parser.add_argument("--quick", action="store_true", help="small budgets: the default rows in ~2 minutes")
    parser.add_argument(
        "--data",
        type=Path,
        help="an MMAFEDB-like tree DIR/{train,valid,test}/<class>/*.jpg (default: generated once in data/bench)",
    )
    parser.add_argument("--images", type=int, help="at most N timed images per row")
    parser.add_argument("--seconds", type=float, help="at most S timed seconds per row (at least one batch)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: outputs/bench/bench-<timestamp>.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    parser.add_argument(
        "--rows", help="comma-separated row names or patterns, e.g. 'seed/*,model-alone/*@112'"
    )
    return parser.parse_args(argv)


def _context(args: argparse.Namespace) -> BenchContext:
    """Check the arguments a user can get wrong, and prepare the data; FERError for each mistake."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda: torch sees no CUDA device on this machine; use --device cpu")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None and args.threads < 1:
        raise FERError(f"--threads must be at least 1, got {args.threads}")
    if device.type == "cuda":
        images, seconds = CUDA_QUICK_BUDGET if args.quick else CUDA_FULL_BUDGET
    else:
        images, seconds = QUICK_BUDGET if args.quick else FULL_BUDGET
    images = images if args.images is None else args.images
    seconds = seconds if args.seconds is None else args.seconds
    if images < 1 or seconds <= 0:
        raise FERError("--images must be at least 1 and --seconds above 0")
    if args.data is None:
        data_dir = ensure_jpeg_tree(default_data_dir())
    else:
        data_dir = args.data
        ImageFolders(data_dir).index("train")  # the layout check, with its message naming the fix
    return BenchContext(data_dir=data_dir, device=device, images=images, seconds=seconds, quick=args.quick)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Measure the selected rows, print the table to stdout, write the JSON; 1 if a row failed, 2 on bad input."""
    args = parse_args(argv)
    if args.out is not None:
        check_output_file(args.out, args.overwrite)
    ctx = _context(args)
    rows = select_rows(args.rows, ctx.device)
    quiet_known_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines per row
    threads_before = torch.get_num_threads()  # restored: main() may run inside another program (tests)
    torch.set_num_threads(args.threads or available_cores())
    try:
        peak_resettable = _reset_peak_memory(ctx.device)
        header = make_header(ctx, peak_resettable)
        # as fer.train does; it applies to every row of this process, the seed's too (conservative ratios)
        header["allocator"] = (
            "heap kept (fer.run.process.tune_cpu_allocator)" if tune_cpu_allocator() else "default"
        )
        results = [run_row(row, ctx) for row in rows]
    finally:
        torch.set_num_threads(threads_before)
    print(format_table(header, results), flush=True)
    out = args.out or default_out_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results_json(header, results), indent=2) + "\n")
    _progress(f"wrote {display_path(out)}")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
