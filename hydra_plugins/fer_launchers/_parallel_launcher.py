"""``hydra/launcher=parallel``: hydra-joblib-launcher's loky processes, ``n_jobs`` jobs at a time.

Joblib gives each worker process ``cores // n_jobs`` CPU threads (its ``OMP_NUM_THREADS``, which torch
follows), so that N jobs do not oversubscribe the machine; fer caps ``n_jobs`` at the number of jobs
launched together (Optuna launches ``hydra.sweeper.n_jobs`` trials at a time), so that 2 trials on 16 cores
get 8 threads each, not 1. Each worker registers fer's resolvers before Hydra names the job's folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra_plugins.hydra_joblib_launcher import _core
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)


def execute_job(*args: Any) -> JobReturn:
    """joblib's job, in the worker process, after fer's resolvers are registered there."""
    from fer.run.config import register_resolvers

    register_resolvers()
    return _core.execute_job(*args)


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed

        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configured = int(self.joblib.get("n_jobs") or 1)
        options = {**self.joblib, "backend": "loky"}
        if configured > 0:
            options["n_jobs"] = min(configured, len(job_overrides))
        _core.process_joblib_cfg(options)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info("Joblib.Parallel(n_jobs=%s) is launching %d jobs", options["n_jobs"], len(job_overrides))
        state = Singleton.get_state()
        return Parallel(**options)(
            delayed(execute_job)(
                initial_job_idx + i, overrides, self.hydra_context, self.config, self.task_function, state
            )
            for i, overrides in enumerate(job_overrides)
        )
