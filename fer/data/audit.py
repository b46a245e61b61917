"""``python -m fer.data.audit DATA_DIR [--data NAME]``: what is in a data set, and what repeats across splits.

Per split and class: image counts, modes, sizes and unreadable files. Across the whole tree: exact duplicates
(same bytes, BLAKE2b) and near duplicates (a perceptual hash within :data:`DEFAULT_MAX_DISTANCE` bits), with
how many images of each split have a copy in another one: MMAFEDB's valid/test are reported to repeat
FER2013 images, and a copy of a test image in train inflates every test number.

Any data source works (``--data`` names a ``conf/data`` option; default: class folders). Every sample is read
and decoded once (image files in a process pool, in chunks; rows of a table in this process); near duplicates are found by
multi-index hashing (split the hash into ``max_distance + 1`` bands: two hashes within ``max_distance`` bits
agree exactly on at least one band), so only hashes sharing a band value are compared, not all N^2 pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer.data.decode import as_8bit
from fer.data.sources import DataSource, ImageFolders, SplitIndex
from fer.errors import FERError
from fer.files import check_output_file
from fer.run.cli import command
from fer.workers import available_cores, map_chunks

# The perceptual hash: the 16x16 lowest frequencies of the 2-D DCT of the 48x48 gray image (MMAFEDB's own
# size; other sizes are resized to it), without the DC term (overall brightness), each bit "above the median
# of the 255 coefficients": 255 bits, blind to brightness and contrast. Measured on the bench's 4,200
# generated 48 px faces: distinct faces are 18 bits apart or more (median to the nearest: 44); copies of 420
# of them re-encoded at JPEG quality 75 move at most 14 bits, upscaled 2x 8, brightened x1.05 or +10 levels
# or with contrast x1.2 at most 16; brightened x1.1 (clipping) 98% within 16, resized to 64 px 91%, JPEG
# quality 50 89%. A threshold of 16 sits between the two groups. The 64-bit pHash and dHash separate those
# faces by 0-4 bits only, and a 256-bit dHash moves re-encodings by up to 66 bits: both were rejected.
# Computed here rather than with imagehash: one matrix product per chunk of files instead of a DCT and an
# object per image, bits packed for the vectorized search below, and no PyWavelets/scipy dependency.
HASH_SIDE = 48
HASH_FREQUENCIES = 16
HASH_BITS = HASH_FREQUENCIES * HASH_FREQUENCIES - 1
DEFAULT_MAX_DISTANCE = 16
CHUNK = 256  # files per task of the pool
SERIAL_LIMIT = 1024  # below this many files a pool costs more than it saves
SMALL_BUCKET = 64  # buckets up to this size are paired in vectorized passes; larger ones block by block
PAIR_BLOCK_BYTES = 1 << 25
FORMATS = ("markdown", "json")

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _dct_matrix(frequencies: int, side: int) -> np.ndarray:
    """Rows of the orthonormal DCT-II basis: ``D @ X @ D.T`` is the low block of ``dctn(X, norm='ortho')``."""
    n = np.arange(side)
    k = np.arange(frequencies)[:, None]
    basis = np.cos(np.pi * (2 * n + 1) * k / (2 * side)) * np.sqrt(2.0 / side)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


_DCT = _dct_matrix(HASH_FREQUENCIES, HASH_SIDE)


def perceptual_hashes(gray: np.ndarray) -> np.ndarray:
    """``(B, 48, 48)`` gray images -> ``(B, 32)`` uint8: 255 hash bits each (the last bit is always 0)."""
    coefficients = (_DCT @ gray.astype(np.float32) @ _DCT.T).reshape(len(gray), -1)[:, 1:]
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.packbits(bits, axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between packed hashes, row by row (broadcasting)."""
    xor = np.ascontiguousarray(np.bitwise_xor(a, b))
    if hasattr(np, "bitwise_count") and xor.shape[-1] % 8 == 0:  # numpy >= 2: popcount on 64-bit words
        return np.bitwise_count(xor.view(np.uint64)).sum(axis=-1, dtype=np.int64)
    return _POPCOUNT[xor].sum(axis=-1, dtype=np.int64)


def gray_48(image: Image.Image) -> Image.Image:
    """Any mode as 8-bit gray at the hash's size (16-bit gray rescaled, not clipped, as fer's loader does)."""
    gray = as_8bit(image, grayscale=True)
    return (
        gray
        if gray.size == (HASH_SIDE, HASH_SIDE)
        else gray.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    )


# --------------------------------------------------------------------------------------------- scanning


@dataclass
class Scan:
    """What reading every file gave, one entry per file in the order of ``paths``."""

    digests: list[bytes]  # BLAKE2b-128 of the bytes (b"" when the file could not be read at all)
    modes: list[str]  # PIL mode as stored ("L", "RGB", ...); "" when unreadable
    sizes: list[tuple[int, int]]
    errors: dict[int, str]  # file index -> why it could not be decoded
    hashes: np.ndarray  # (N, 32) uint8 perceptual hashes (zeros for unreadable files)


def scan_chunk(items: Sequence[tuple[str, Any]], start: int = 0) -> Scan:
    """Read, hash and decode a few image files (``(path, face box or None)``); a file that fails is recorded
    with its error, never raised."""
    digests, modes, sizes, errors = [], [], [], {}
    gray = np.zeros((len(items), HASH_SIDE, HASH_SIDE), dtype=np.uint8)
    for i, (path, box) in enumerate(items):
        digest, mode, size = b"", "", (0, 0)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            digest = hashlib.blake2b(data, digest_size=16).digest()
            with Image.open(io.BytesIO(data)) as image:
                mode, size = image.mode, image.size
                image.load()
                if box is not None:
                    x, y, w, h = box
                    image = image.crop(
                        (max(0, x), max(0, y), min(image.width, x + w), min(image.height, y + h))
                    )
                    size = image.size
                gray[i] = np.asarray(gray_48(image))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            errors[i] = f"{type(error).__name__}: {error}"
        digests.append(digest)
        modes.append(mode)
        sizes.append(size)
    hashes = perceptual_hashes(gray)
    for i in errors:
        hashes[i] = 0
    return Scan(digests, modes, sizes, errors, hashes)


def scan_pixels(pixels: np.ndarray) -> Scan:
    """The same for images stored as rows of a table (``(N, H, W[, 3])`` uint8): a digest of the pixels."""
    digests, modes, sizes = [], [], []
    gray = np.zeros((len(pixels), HASH_SIDE, HASH_SIDE), dtype=np.uint8)
    for i, row in enumerate(pixels):
        digests.append(hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest())
        image = Image.fromarray(row)
        modes.append(image.mode)
        sizes.append(image.size)
        gray[i] = np.asarray(gray_48(image))
    return Scan(digests, modes, sizes, {}, perceptual_hashes(gray))


def _concat(parts: list[Scan]) -> Scan:
    total = sum(len(part.digests) for part in parts)
    scan = Scan([], [], [], {}, np.zeros((total, HASH_BITS // 8 + 1), dtype=np.uint8))
    for part in parts:
        start = len(scan.digests)
        scan.digests += part.digests
        scan.modes += part.modes
        scan.sizes += part.sizes
        scan.errors.update({start + i: message for i, message in part.errors.items()})
        scan.hashes[start : start + len(part.digests)] = part.hashes
    return scan


def scan_index(index: SplitIndex, workers: int, progress: bool = True) -> Scan:
    """Every sample of a split: files in a process pool of ``workers`` (chunks of :data:`CHUNK`)."""
    if index.pixels is not None:
        return scan_pixels(index.pixels)
    results = map_chunks(
        scan_chunk, index.file_samples(), workers=workers, chunk=CHUNK, serial_limit=SERIAL_LIMIT,
        desc=f"audit {index.split}", progress=progress,
    )  # fmt: skip
    return _concat([part for _, part in results])


# ------------------------------------------------------------------------------------------ duplicates


def exact_groups(digests: Sequence[bytes], readable: np.ndarray) -> list[list[int]]:
    """Indices of files with identical bytes, groups of two or more, among the readable files."""
    by_digest: dict[bytes, list[int]] = {}
    for index in np.flatnonzero(readable):
        by_digest.setdefault(digests[index], []).append(int(index))
    return [group for group in by_digest.values() if len(group) > 1]


def _band_values(bits: np.ndarray, bands: int) -> list[np.ndarray]:
    """The hash bits cut into ``bands`` contiguous bands, each as one integer label per hash."""
    values = []
    for columns in np.array_split(np.arange(bits.shape[1]), bands):
        band = bits[:, columns]
        if len(columns) < 63:
            values.append(band.astype(np.int64) @ np.left_shift(np.int64(1), np.arange(len(columns))))
        else:  # too wide for one integer (a small max_distance): number the distinct bands instead
            values.append(np.unique(band, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64))
    return values


def _bucket_pairs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Rows with equal ``values``: the pairs within small buckets (vectorized passes), and the big buckets."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(ordered)])
    small = np.repeat(sizes <= SMALL_BUCKET, sizes)
    left, right = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for offset in range(1, min(int(sizes[sizes <= SMALL_BUCKET].max(initial=1)), SMALL_BUCKET)):
        same = (ordered[offset:] == ordered[:-offset]) & small[offset:]
        left.append(order[:-offset][same])
        right.append(order[offset:][same])
    big = [
        order[start : start + size] for start, size in zip(starts, sizes, strict=True) if size > SMALL_BUCKET
    ]
    return np.concatenate(left), np.concatenate(right), big


def _close_pairs(a: np.ndarray, b: np.ndarray, hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """The candidate pairs ``(a[n], b[n])`` within ``max_distance``, as rows ``i, j, distance``."""
    found = [np.empty((0, 3), dtype=np.int64)]
    step = max(1, PAIR_BLOCK_BYTES // hashes.shape[1])
    for start in range(0, len(a), step):
        left, right = a[start : start + step], b[start : start + step]
        distance = hamming(hashes[left], hashes[right])
        keep = distance <= max_distance
        found.append(np.stack([left[keep], right[keep], distance[keep]], axis=1))
    return np.concatenate(found)


def _close_pairs_in_bucket(members: np.ndarray, hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs of one large bucket within ``max_distance``, compared block by block (bounded memory)."""
    found = [np.empty((0, 3), dtype=np.int64)]
    block = max(1, PAIR_BLOCK_BYTES // (len(members) * hashes.shape[1]))
    member_hashes = hashes[members][None, :, :]
    for start in range(0, len(members), block):
        rows = members[start : start + block]
        distance = hamming(hashes[rows][:, None, :], member_hashes)
        upper = np.arange(start, start + len(rows))[:, None] < np.arange(len(members))[None, :]
        i, j = np.nonzero((distance <= max_distance) & upper)
        found.append(np.stack([rows[i], members[j], distance[i, j]], axis=1))
    return np.concatenate(found)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """``(M, 3)`` rows ``i, j, distance`` (``i < j``): every pair of hashes within ``max_distance`` bits.

    Multi-index hashing: with ``max_distance + 1`` bands, two hashes within ``max_distance`` bits agree on
    at least one band (pigeonhole), so the candidates are the pairs sharing a band value; each is checked.
    """
    bits = np.unpackbits(hashes, axis=1)[:, :HASH_BITS]
    found = [np.empty((0, 3), dtype=np.int64)]
    for values in _band_values(bits, max_distance + 1):
        left, right, big = _bucket_pairs(values)
        found.append(_close_pairs(left, right, hashes, max_distance))
        found += [_close_pairs_in_bucket(members, hashes, max_distance) for members in big]
    pairs = np.concatenate(found)
    pairs[:, :2] = np.sort(pairs[:, :2], axis=1)
    return np.unique(pairs, axis=0)


def _components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components (union-find): a component label per node."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in pairs[:, :2].tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(node) for node in range(count)], dtype=np.int64)


def similar_groups(hashes: np.ndarray, readable: np.ndarray, max_distance: int) -> list[list[int]]:
    """Groups of readable files linked by perceptual hashes within ``max_distance`` (exact copies included).

    A group is a connected component: with a chain a~b~c, a and c can be further apart than the threshold.
    """
    index = np.flatnonzero(readable)
    if len(index) < 2:
        return []
    unique, inverse = np.unique(hashes[index], axis=0, return_inverse=True)
    labels = _components(len(unique), near_pairs(unique, max_distance))[inverse.reshape(-1)]
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    groups = np.split(index[order], starts[1:])
    return [[int(i) for i in group] for group in groups if len(group) > 1]


# --------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Files:
    """The samples of every split: their names (relative paths, or file and line), split and class."""

    root: Path
    relative: list[str]
    splits: list[str]
    classes: list[str]
    split_names: tuple[str, ...]
    class_names: tuple[str, ...]


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def list_and_scan(source: DataSource, workers: int, progress: bool = True) -> tuple[Files, Scan]:
    """Every sample of every split of ``source`` (checked with fer's messages), read once."""
    root = source.root.resolve()
    relative, splits, classes, scans = [], [], [], []
    for split in source.splits:
        index = source.index(split)
        relative += [_relative(p, root) for p in index.paths]
        splits += [split] * len(index)
        classes += [index.class_names[label] for label in index.labels]
        scans.append(scan_index(index, workers, progress))
    return Files(root, relative, splits, classes, tuple(source.splits), tuple(source.class_names)), _concat(
        scans
    )


def _split_stats(files: Files, scan: Scan) -> dict[str, Any]:
    """Per split and class: images, modes, the most common size and how many differ, unreadable files."""
    members: dict[tuple[str, str], list[int]] = {
        (s, c): [] for s in files.split_names for c in files.class_names
    }
    for i, key in enumerate(zip(files.splits, files.classes, strict=True)):
        members[key].append(i)
    stats: dict[str, Any] = {}
    for split in files.split_names:
        classes = {}
        for name in files.class_names:
            listed = members[(split, name)]
            readable = [i for i in listed if i not in scan.errors]
            sizes = Counter(scan.sizes[i] for i in readable).most_common(1)
            (width, height), common = sizes[0] if sizes else ((0, 0), 0)
            classes[name] = {
                "images": len(listed),
                "modes": dict(Counter(scan.modes[i] for i in readable).most_common()),
                "size": f"{width}x{height}" if common else None,
                "size_count": common,
                "other_sizes": len(readable) - common,
                "unreadable": len(listed) - len(readable),
            }
        stats[split] = {"images": sum(c["images"] for c in classes.values()), "classes": classes}
    return stats


def leakage(
    groups: list[list[int]], splits: list[str], totals: dict[str, int], names: Sequence[str]
) -> dict[str, dict[str, int]]:
    """``[S][T]``: images of split S with a copy in split T (for S == T: another copy within S)."""
    matrix = {s: dict.fromkeys(names, 0) for s in names}
    for group in groups:
        counts = Counter(splits[i] for i in group)
        for split, count in counts.items():
            for other in names:
                partners = counts.get(other, 0) - (1 if other == split else 0)
                if partners > 0:
                    matrix[split][other] += count
    return {s: {"images": totals[s], **matrix[s]} for s in names}


def _group_json(group: list[int], files: Files, scan: Scan | None = None) -> dict[str, Any]:
    first = group[0]
    entry: dict[str, Any] = {
        "paths": [files.relative[i] for i in group],
        "splits": sorted({files.splits[i] for i in group}, key=files.split_names.index),
        "classes": sorted({files.classes[i] for i in group}, key=files.class_names.index),
    }
    if scan is not None:
        entry["distances"] = [int(hamming(scan.hashes[first], scan.hashes[i])) for i in group]
    return entry


def _ranked(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups spanning several splits first (the leaks), then conflicting labels, then the largest."""
    return sorted(
        groups, key=lambda g: (-len(g["splits"]), -len(g["classes"]), -len(g["paths"]), g["paths"][0])
    )


def audit(
    source: DataSource | str | Path,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scan a data set (a source, or a folder of class folders) and return the whole report as JSON-ready
    data (what ``--format json`` writes)."""
    if not 0 <= max_distance < HASH_BITS // 2:
        raise FERError(f"--max-distance must be between 0 and {HASH_BITS // 2 - 1}, got {max_distance}")
    if not isinstance(source, DataSource):
        source = ImageFolders(source)
    workers = workers or available_cores()
    start = time.perf_counter()
    files, scan = list_and_scan(source, workers, progress)
    scan_seconds = time.perf_counter() - start
    count = len(files.relative)
    readable = np.ones(count, dtype=bool)
    readable[list(scan.errors)] = False
    exact = exact_groups(scan.digests, readable)
    similar = similar_groups(scan.hashes, readable, max_distance)
    # a near-duplicate group is one whose files are not all byte-identical
    near = [group for group in similar if len({scan.digests[i] for i in group}) > 1]
    names = files.split_names
    totals = {split: files.splits.count(split) for split in names}
    return {
        "data_dir": str(files.root),
        "source": source.config()["_target_"],
        "images": count,
        "unreadable_count": len(scan.errors),
        "scan": {
            "seconds": round(scan_seconds, 3),
            "images_per_s": round(count / scan_seconds, 1) if scan_seconds > 0 else None,
            "workers": workers if workers > 1 and count >= SERIAL_LIMIT else 1,
            "seconds_total": round(time.perf_counter() - start, 3),
        },
        "near_duplicate_rule": {
            "hash": f"pHash: {HASH_FREQUENCIES}x{HASH_FREQUENCIES} low DCT frequencies of the "
            f"{HASH_SIDE}x{HASH_SIDE} gray image, without DC",
            "bits": HASH_BITS,
            "max_distance": max_distance,
        },
        "splits": _split_stats(files, scan),
        "unreadable": [{"path": files.relative[i], "error": scan.errors[i]} for i in sorted(scan.errors)],
        "exact_duplicates": _ranked([_group_json(g, files) for g in exact]),
        "near_duplicates": _ranked([_group_json(g, files, scan) for g in near]),
        "leakage": {
            "exact": leakage(exact, files.splits, totals, names),
            "exact_or_near": leakage(similar, files.splits, totals, names),
        },
    }


# ------------------------------------------------------------------------------------------- markdown


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "–"


def _leak_table(matrix: dict[str, dict[str, int]]) -> list[str]:
    names = list(matrix)
    lines = ["| split | images | " + " | ".join(f"copy in {s}" for s in names) + " |"]
    lines.append("|---|---:|" + "---:|" * len(names))
    for split in names:
        row = matrix[split]
        lines.append(f"| {split} | {row['images']:,} | " + " | ".join(f"{row[s]:,}" for s in names) + " |")
    return lines


def _group_line(group: dict[str, Any], sign: str) -> str:
    paths = group["paths"]
    shown = paths[:4]
    if "distances" in group:
        text = f"`{shown[0]}` " + " ".join(
            f"{sign} `{p}` ({d} bits)" for p, d in zip(shown[1:], group["distances"][1:], strict=False)
        )
    else:
        text = f" {sign} ".join(f"`{p}`" for p in shown)
    more = f" and {len(paths) - len(shown)} more" if len(paths) > len(shown) else ""
    labels = f"; labels differ: {', '.join(group['classes'])}" if len(group["classes"]) > 1 else ""
    return f"- {text}{more}{labels}"


def _groups_section(title: str, groups: list[dict[str, Any]], sign: str, examples: int) -> list[str]:
    cross = sum(len(g["splits"]) > 1 for g in groups)
    conflicts = sum(len(g["classes"]) > 1 for g in groups)
    images = sum(len(g["paths"]) for g in groups)
    lines = [
        f"**{title}**: {len(groups):,} groups ({images:,} images), {cross:,} across splits, "
        f"{conflicts:,} with different labels."
    ]
    if groups:
        lines += ["", *[_group_line(g, sign) for g in groups[:examples]]]
        if len(groups) > examples:
            lines.append(f"- ... {len(groups) - examples:,} more (all of them: `--format json`)")
    return lines


def render_markdown(report: dict[str, Any], examples: int = 10) -> str:
    """The report for people: leakage first, then counts per split and class, then examples."""
    scan, rule = report["scan"], report["near_duplicate_rule"]
    lines = [
        f"# Data audit of {report['data_dir']}",
        "",
        f"{report['images']:,} images in {len(report['splits'])} splits, {report['unreadable_count']:,} unreadable; "
        f"read in {scan['seconds']:.1f} s ({scan['images_per_s']:,.0f} images/s, "
        f"{_processes(scan['workers'])}).",
        "",
        "## Copies across splits",
        "",
        "Images of each split (row) that have a copy in a split (column); on the diagonal, another copy",
        "in the same split.",
        "",
        "Exact copies (identical file bytes):",
        "",
        *_leak_table(report["leakage"]["exact"]),
        "",
        f"Exact or near copies (perceptual hashes at most {rule['max_distance']} of {rule['bits']} bits "
        "apart):",
        "",
        *_leak_table(report["leakage"]["exact_or_near"]),
        "",
    ]
    exact, near = report["leakage"]["exact"], report["leakage"]["exact_or_near"]
    names = list(exact)
    for split, other in [(s, o) for i, s in enumerate(names) for o in names[:i]][::-1]:
        total = exact[split]["images"]
        lines.append(
            f"- **{split} vs {other}**: {exact[split][other]:,} of {total:,} {split} images "
            f"({_percent(exact[split][other], total)}) have an exact copy in {other}; "
            f"{near[split][other]:,} ({_percent(near[split][other], total)}) counting near copies."
        )
    lines += [
        "",
        "## Splits and classes",
        "",
        "| split | class | images | modes | most common size | other sizes | unreadable |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for split, stats in report["splits"].items():
        for name, row in stats["classes"].items():
            modes = ", ".join(f"{mode} {count:,}" for mode, count in row["modes"].items()) or "–"
            size = f"{row['size']} ({row['size_count']:,})" if row["size"] else "–"
            lines.append(
                f"| {split} | {name} | {row['images']:,} | {modes} | {size} | {row['other_sizes']:,} "
                f"| {row['unreadable']:,} |"
            )
    if report["unreadable"]:
        lines += ["", "## Unreadable files", ""]
        lines += [f"- `{item['path']}`: {item['error']}" for item in report["unreadable"]]
    lines += [
        "",
        "## Duplicate groups",
        "",
        *_groups_section("Exact duplicates", report["exact_duplicates"], "=", examples),
        "",
        *_groups_section("Near duplicates (not byte-identical)", report["near_duplicates"], "~", examples),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fer-audit",
        description="Count, check and de-duplicate a data set: class folders DIR/{train,valid,test}/<class>/ "
        "by default, or any data=<NAME> format of conf/data/ (fer2013, rafdb, ...).",
    )
    parser.add_argument("data_dir", type=Path, help="the data folder, e.g. data/MMAFEDB")
    parser.add_argument(
        "--data", metavar="NAME", help="the data set format: a conf/data option (default: class folders)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="markdown", help="report format (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the report here instead of stdout")
    parser.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    parser.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        help=f"near duplicates: at most this many of the {HASH_BITS} hash bits differ (default: %(default)s)",
    )
    parser.add_argument(
        "--examples", type=int, default=10, help="duplicate groups listed in markdown (default: 10)"
    )
    parser.add_argument("--workers", type=int, help="processes reading files (default: all usable cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def source_for(data: str | None, data_dir: Path) -> DataSource:
    """The source of ``conf/data/<data>.yaml`` over ``data_dir`` (class folders without ``data``)."""
    if data is None:
        return ImageFolders(data_dir)
    from fer.run.config import compose_data_source

    return compose_data_source(data, data_dir)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Print (or ``--out``) the report; 0 when made, 2 with one ``fer: error:`` line for a user mistake."""
    args = parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise FERError(f"--workers must be at least 1, got {args.workers}")
    out = check_output_file(args.out, args.overwrite) if args.out is not None else None
    source = source_for(args.data, args.data_dir)
    report = audit(source, args.max_distance, args.workers, progress=not args.no_progress)
    text = (
        json.dumps(report, indent=2) + "\n"
        if args.format == "json"
        else render_markdown(report, args.examples)
    )
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
