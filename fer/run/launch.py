"""Where sweep jobs run: side by side on this machine (``hydra/launcher=parallel``, joblib) or as SLURM jobs
(``hydra/launcher=slurm``, submitit), and DDP over SLURM tasks (``trainer=slurm``, Lightning's
``SLURMEnvironment``: each SLURM task is one rank, so Lightning starts no processes of its own).

The launchers themselves are Hydra plugins (``hydra_plugins/fer_launchers``); this module holds what their
configs and fer's jobs ask: tasks and GPUs per node from the trainer config, how many jobs a machine holds,
CPU threads per job, and the check that a SLURM allocation is the one the trainer config describes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any

from fer.errors import FERError

log = logging.getLogger(__name__)

SLURM_TRAINER_HINT = "trainer=slurm runs inside SLURM tasks: launch it with -m hydra/launcher=slurm"


class SlurmError(FERError):
    """A SLURM allocation that does not match the run's config, or a SLURM job that ended without a result."""


# fer's launchers (hydra/launcher=<name>) and the plugin each one extends
LAUNCHER_PLUGINS = {
    "hydra_plugins.fer_launchers._parallel_launcher.ParallelLauncher": (
        "parallel", "hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "hydra_plugins.fer_launchers._slurm_launcher.SlurmLauncher": (
        "slurm", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}  # fmt: skip


def check_launcher_installed(target: object) -> None:
    """A sweep through one of fer's launchers needs its engine's Hydra plugin: say which to install, before
    the sweep starts (Hydra itself would only say that it knows no such plugin class)."""
    from fer.run.cli import fail

    if str(target) in LAUNCHER_PLUGINS:
        name, module, package = LAUNCHER_PLUGINS[str(target)]
        if find_spec(module) is None:
            fail(f"hydra/launcher={name} needs the {package} package: pip install 'fer[launchers]'.")


def parallel_jobs() -> int:
    """``hydra.launcher.n_jobs`` of ``parallel``: as many jobs at a time as this process has CPU cores."""
    from fer.workers import available_cores

    return available_cores()


# ------------------------------------------------------------------------------ the launcher's config


def tasks_per_node(devices: object) -> int:
    """``hydra.launcher.tasks_per_node``: one SLURM task per device (``trainer.devices``, a count)."""
    try:
        count = int(str(devices))
    except ValueError:
        raise SlurmError(
            f"trainer.devices={devices}: a SLURM job needs a number of devices per node (one task each), "
            "e.g. trainer.devices=4."
        ) from None
    if count < 1:
        raise SlurmError(f"trainer.devices={devices}: a SLURM job needs at least 1 device per node.")
    return count


def gpus_per_node(accelerator: object, devices: object) -> int | None:
    """``hydra.launcher.gpus_per_node``: the devices of a GPU trainer, none for CPU ranks."""
    return tasks_per_node(devices) if str(accelerator) in ("gpu", "cuda") else None


# ------------------------------------------------------------------------------ inside a SLURM job


def slurm_allocation() -> tuple[int, int] | None:
    """(tasks per node, nodes) of the SLURM job step this process is a task of, None outside one."""
    environ = os.environ
    if "SLURM_NTASKS" not in environ or environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    nodes = int(environ.get("SLURM_NNODES", "1"))
    per_node = environ.get("SLURM_NTASKS_PER_NODE")
    tasks = int(per_node) if per_node and per_node.isdigit() else int(environ["SLURM_NTASKS"]) // nodes
    return tasks, nodes


def uses_slurm_environment(trainer_cfg: Mapping[str, Any]) -> bool:
    plugins = trainer_cfg.get("plugins") or []
    return any("SLURMEnvironment" in str(p.get("_target_", "")) for p in plugins if isinstance(p, Mapping))


def check_slurm_allocation(trainer_cfg: Mapping[str, Any]) -> None:
    """``trainer=slurm``: the devices per node and nodes of the config must be the tasks per node and nodes
    that SLURM allocated (Lightning's own check names only one of the two numbers, as a traceback)."""
    if not uses_slurm_environment(trainer_cfg):
        return
    allocation = slurm_allocation()
    if allocation is None:
        raise SlurmError(
            f"This process is not a task of a SLURM job (SLURM_NTASKS is not set): {SLURM_TRAINER_HINT}, or "
            "use trainer=ddp / trainer=ddp_sim on one machine."
        )
    tasks, nodes = allocation
    devices, num_nodes = trainer_cfg.get("devices"), trainer_cfg.get("num_nodes", 1)
    if str(devices) != str(tasks):
        raise SlurmError(
            f"trainer.devices={devices}, but this SLURM job has {tasks} task(s) per node: each device is one "
            f"task. Set trainer.devices={tasks}, or submit with hydra/launcher=slurm, which asks for "
            "trainer.devices tasks per node."
        )
    if str(num_nodes) != str(nodes):
        raise SlurmError(
            f"trainer.num_nodes={num_nodes}, but this SLURM job has {nodes} node(s). Set "
            f"trainer.num_nodes={nodes}, or submit with hydra/launcher=slurm, which asks for trainer.num_nodes "
            "nodes."
        )


def use_task_cpus() -> int | None:
    """Torch's CPU threads: the CPUs SLURM gave this task (``--cpus-per-task``), so that the tasks sharing a
    node do not oversubscribe it. Returns the count set, None when SLURM gave no count."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or not cpus.isdigit():
        return None
    import torch

    torch.set_num_threads(int(cpus))
    return int(cpus)
