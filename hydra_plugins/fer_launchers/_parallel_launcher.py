"""``hydra/launcher=parallel``: hydra-joblib-launcher's loky processes, ``n_jobs`` jobs at a time.

Joblib gives each worker process ``cores // n_jobs`` CPU threads (its ``OMP_NUM_THREADS``, which torch
follows), so that N jobs do not oversubscribe the machine; fer caps ``n_jobs`` at the number of jobs
launched together (Optuna launches ``hydra.sweeper.n_jobs`` trials at a time), so that 2 trials on 16 cores
get 8 threads each, not 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        configured = int(self.joblib.get("n_jobs") or 1)
        if configured > 0:
            self.joblib["n_jobs"] = min(configured, len(job_overrides))
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            self.joblib["n_jobs"] = configured
