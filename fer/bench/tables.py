"""Bench rows for data sets distributed as tables: FER2013's 35,887 rows read and packed."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

from fer.bench.data import default_data_dir, print_progress
from fer.bench.harness import BenchContext, Measurement, register
from fer.data.formats import FER2013_USAGE_ROWS, make_fer2013_full_size
from fer.data.sources import FER2013
from fer.files import building_folder

FER2013_KEY_FILE = "bench.json"
USAGE_ROWS = dict(FER2013_USAGE_ROWS)  # rows per Usage value of the generated table
SEED = 0


def fer2013_csv_dir() -> Path:
    """A FER2013-size ``fer2013.csv`` (305 MB) under ``data/bench-fer2013``, generated once and reused."""
    folder = default_data_dir().parent / "bench-fer2013"
    key = {"format": 1, "rows": USAGE_ROWS, "seed": SEED}
    key_file = folder / FER2013_KEY_FILE
    if key_file.is_file() and json.loads(key_file.read_text()) == key:
        return folder
    print_progress(f"generating {sum(USAGE_ROWS.values()):,} FER2013 rows in {folder} (once) ...")
    fix = "Remove that folder or set FER_DATA_DIR to another data folder."
    with building_folder(folder, FER2013_KEY_FILE, "generated FER2013 table", fix) as tmp:
        make_fer2013_full_size(tmp, seed=SEED, usage_rows=USAGE_ROWS)
        (tmp / FER2013_KEY_FILE).write_text(json.dumps(key) + "\n")
    return folder


@register(
    "fer/pack-fer2013",
    "read FER2013's fer2013.csv (35,887 rows of 2,304 values) and pack its 3 splits; then again, packed",
    default_on=(),
)
def fer_pack_fer2013(ctx: BenchContext) -> Measurement:
    from fer.data.packing import pack_split

    folder = fer2013_csv_dir()
    cache = folder.parent / f".bench-fer2013-cache-{uuid.uuid4().hex[:8]}"
    try:
        start = time.perf_counter()
        source = FER2013(folder)
        indexes = [source.index(split) for split in source.splits]
        read = time.perf_counter() - start
        for index in indexes:
            pack_split(index, cache, progress=False)
        seconds = time.perf_counter() - start
        again = time.perf_counter()
        source = FER2013(folder)
        for split in source.splits:
            pack_split(source.index(split), cache, progress=False)
        reopen = time.perf_counter() - again
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    rows = sum(len(index) for index in indexes)
    notes = (
        f"reading and parsing the CSV {read:.1f} s, packing {seconds - read:.1f} s; a later run (CSV read "
        f"again, packs memory-mapped) {reopen:.1f} s"
    )
    return Measurement(rows, seconds, notes=notes)
