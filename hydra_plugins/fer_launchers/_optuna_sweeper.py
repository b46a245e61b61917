"""``hparams_search=optuna``: Hydra's Optuna sweeper, going on past failed trials.

hydra-optuna-sweeper 1.2 (the release for Hydra 1.3) ends the whole study when one trial's job raises or
returns no value. Here such a trial is told to the study with the worst value of its direction (-inf when
maximizing), so the sampler learns to avoid that region, it can never be the best trial, and the study goes
on; the job's error is logged and stays in its own folder's ``train.log``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper

log = logging.getLogger(__name__)


class OptunaSweeper(optuna_sweeper.OptunaSweeper):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        directions = self.sweeper._get_directions()
        worst = [-math.inf if str(d).lower().endswith("maximize") else math.inf for d in directions]
        self.sweeper.launcher = FailedTrialsScored(
            self.sweeper.launcher, worst[0] if len(worst) == 1 else worst
        )


class FailedTrialsScored(Launcher):
    """A launcher whose failed jobs (an exception, or no float value) return ``worst`` instead."""

    def __init__(self, launcher: Launcher, worst: float | list[float]) -> None:
        self.launcher = launcher
        self.worst = worst

    def setup(self, **kwargs: Any) -> None:
        self.launcher.setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx)
        for ret in returns:
            if ret.status == JobStatus.COMPLETED and _is_value(ret.return_value):
                continue
            reason = ret._return_value if ret.status != JobStatus.COMPLETED else "it returned no value"
            log.error(
                "Failed experiment %s: %s (told to the study as %s; the study goes on)",
                " ".join(ret.overrides or ()),
                str(reason).splitlines()[0] if str(reason) else type(reason).__name__,
                self.worst,
            )
            ret.status = JobStatus.COMPLETED
            ret.return_value = self.worst
        return returns


def _is_value(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return all(not math.isnan(float(v)) for v in values)
    except (TypeError, ValueError):
        return False
