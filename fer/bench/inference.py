"""Inference speed of a fer model: PyTorch eager against onnxruntime, on the same device and inputs.

:func:`inference_latency` is meant to be called by ``fer.bench``; it measures the two numbers that matter for
serving: the latency of one image (median over many runs, after warm-up) and the throughput of large batches.
Both runtimes take their input from and return their logits to host memory, as a server would, so on a GPU
the copies are part of both figures.
"""

from __future__ import annotations

import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer.bench.harness import BenchContext, Measurement, register
from fer.errors import FERError
from fer.export import export_onnx, load_fer_checkpoint
from fer.models import FERModule

LATENCY_RUNS = 50
LATENCY_WARMUP = 5
THROUGHPUT_BATCH = 256
THROUGHPUT_RUNS = 3  # after one untimed batch


def _time_calls(call: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _measure(
    run: Callable[[np.ndarray], np.ndarray],
    single: np.ndarray,
    batch: np.ndarray,
    runs: int,
    warmup: int,
    batch_runs: int,
) -> dict[str, float]:
    """Median and 90th-percentile latency of ``single`` (ms); images/s over ``batch_runs`` of ``batch``."""
    _time_calls(lambda: run(single), warmup)
    latencies = _time_calls(lambda: run(single), runs)
    _time_calls(lambda: run(batch), 1)
    batch_seconds = sum(_time_calls(lambda: run(batch), batch_runs))
    return {
        "latency_ms": statistics.median(latencies) * 1000,
        "latency_ms_p90": float(np.percentile(latencies, 90)) * 1000,
        "images_per_s": len(batch) * batch_runs / batch_seconds,
    }


def _onnx_session(path: Path, device: str, threads: int):
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FERError("this onnxruntime has no CUDA provider: pip install onnxruntime-gpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the same number of threads as torch: a like-for-like comparison
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def inference_latency(
    model: FERModule | str | Path,
    onnx_path: str | Path | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    runs: int = LATENCY_RUNS,
    warmup: int = LATENCY_WARMUP,
    throughput_batch: int = THROUGHPUT_BATCH,
    throughput_runs: int = THROUGHPUT_RUNS,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``throughput_batch`` throughput of PyTorch eager and onnxruntime.

    ``model``: a FERModule or a checkpoint path. ``onnx_path``: its export (default: exported here into a
    temporary file at ``image_size``). ``image_size`` defaults to the model's; it must match the ONNX graph's.
    Returns ``{"torch": {...}, "onnxruntime": {...}, ...}`` with ``latency_ms`` (median), ``latency_ms_p90``
    and ``images_per_s`` per runtime, the settings, and the largest logit difference between the two (with
    the largest logit, for scale).
    """
    if device not in ("cpu", "cuda"):
        raise FERError(f"device={device!r}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FERError("device=cuda: torch sees no CUDA device on this machine")
    module = model if isinstance(model, FERModule) else load_fer_checkpoint(model)
    size = int(image_size or module.preprocessing.image_size)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fer-onnx-") as tmp:
        path = (
            Path(onnx_path) if onnx_path else export_onnx(module, Path(tmp) / "model.onnx", image_size=size)
        )
        session = _onnx_session(path, device, threads)
        graph_input = session.get_inputs()[0]
        if list(graph_input.shape[1:]) != [3, size, size]:
            raise ValueError(
                f"{path} takes inputs of shape {graph_input.shape}, not (batch, 3, {size}, {size})"
            )
        network = copy.deepcopy(module.model).to(device).eval()
        memory_format = module.memory_format  # as FERModule.forward: channels_last unless turned off

        @torch.inference_mode()
        def run_torch(x: np.ndarray) -> np.ndarray:
            batch = torch.from_numpy(x).to(device).contiguous(memory_format=memory_format)
            return network(batch).cpu().numpy()

        def run_onnx(x: np.ndarray) -> np.ndarray:
            return session.run(None, {graph_input.name: x})[0]

        rng = np.random.default_rng(0)
        batch = rng.standard_normal((throughput_batch, 3, size, size), dtype=np.float32)
        single = np.ascontiguousarray(batch[:1])
        results = {
            "torch": _measure(run_torch, single, batch, runs, warmup, throughput_runs),
            "onnxruntime": _measure(run_onnx, single, batch, runs, warmup, throughput_runs),
        }
        reference = run_torch(batch[:8])
        difference = float(np.abs(reference - run_onnx(batch[:8])).max())
        providers = session.get_providers()
    return {
        **results,
        "device": device,
        "image_size": size,
        "backbone": module.hparams.get("backbone"),
        "cpu_threads": threads,
        "onnxruntime_providers": providers,
        "latency_batch": 1,
        "latency_runs": runs,
        "throughput_batch": throughput_batch,
        "throughput_runs": throughput_runs,
        "max_abs_logit_diff": difference,  # on random inputs, whose logits are larger than real images'
        "max_abs_logit": float(np.abs(reference).max()),
    }


# ------------------------------------------------------------------------------------------ rows

DEFAULT_SIZE = 112  # conf/data/_base.yaml
_INFERENCE: dict[int, dict] = {}


def _inference(ctx: BenchContext, runtime: str, part: str) -> Measurement:
    """Inference at fer's default size: PyTorch eager against onnxruntime (one measurement serves 4 rows)."""
    if id(ctx) not in _INFERENCE:
        from fer.data.preprocessing import Preprocessing

        module = FERModule(preprocessing=Preprocessing(DEFAULT_SIZE).as_dict())
        quick_runs = {"runs": 20, "throughput_runs": 1} if ctx.quick else {}
        _INFERENCE[id(ctx)] = inference_latency(module, device=ctx.device.type, **quick_runs)
    result = _INFERENCE[id(ctx)]
    figures = result[runtime]
    if part == "latency":
        # images/s of batch-1 calls = 1000 / median latency; the latency itself is in the notes
        runs = result["latency_runs"]
        median = figures["latency_ms"]
        notes = f"batch 1: median {median:.2f} ms, p90 {figures['latency_ms_p90']:.2f} ms over {runs} calls"
        return Measurement(runs, runs * median / 1000, notes=notes)
    batch = result["throughput_batch"]
    seconds = batch / figures["images_per_s"]
    notes = f"batch {batch}; largest logit difference torch vs onnxruntime {result['max_abs_logit_diff']:.1e}"
    return Measurement(batch, seconds, notes=notes)


for _runtime in ("torch", "onnxruntime"):
    for _part in ("latency", "throughput"):
        register(
            f"inference/{_runtime}/{_part}@{DEFAULT_SIZE}",
            f"inference, {'PyTorch eager' if _runtime == 'torch' else 'onnxruntime'}, "
            + ("batch 1 (images/s = 1000 / median ms)" if _part == "latency" else "batch 256"),
            compare_to=f"inference/torch/{_part}@{DEFAULT_SIZE}",
        )(functools.partial(_inference, runtime=_runtime, part=_part))
