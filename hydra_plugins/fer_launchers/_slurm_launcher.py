"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher with what fer's jobs need.

Each sweep job is one SLURM array task (submitit's logs in ``<sweep folder>/.submitit/``), and each SLURM
task of it one rank of the job's DDP run. Beyond submitit's launcher: the other ranks of a job leave the
job's records to rank 0, each task uses the CPUs SLURM gave it, and a job that SLURM ended without a result
(killed, out of memory, node lost) is a failed job of the sweep (for Optuna a failed trial) instead of an
exception that abandons the other jobs. A requeued job (preemption or time limit; submitit's signal handler
is the one owner of the requeue) runs the same job again, which continues from the ``last.ckpt`` in its
own folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from fer.run.launch import SlurmError, use_task_cpus

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, for fer's jobs (see the module's docstring)."""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """One sweep job, in each SLURM task of its job (every task is a rank of the same run)."""
        import submitit

        from fer.run.config import register_resolvers

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        register_resolvers()
        use_task_cpus()
        Singleton.set_state(singleton_state)
        setup_globals()
        environment = submitit.JobEnvironment()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra):
            sweep_config.hydra.job.id = environment.job_id
            sweep_config.hydra.job.num = job_num
            if environment.global_rank > 0:
                # rank 0 writes the job's configuration record; the other ranks share its folder
                sweep_config.hydra.output_subdir = None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs as one SLURM array and wait for all of them; a job that ended without a result is
        a failed job (recorded in the sweep's summary), not an exception that abandons the others."""
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in shared else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items()
                if key not in ("submitit_folder", "max_num_timeout")
            }
        )
        log.info("Submitting %d SLURM jobs; sweep folder %s", len(job_overrides), sweep_dir)
        arguments = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            arguments.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
            )
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        for job in jobs:
            log.info("SLURM job %s: logs in %s", job.job_id, job.paths.stdout.parent)
        return [self._result(job, args) for job, args in zip(jobs, arguments, strict=True)]

    def _result(self, job: Any, arguments: tuple) -> JobReturn:
        """The job's own JobReturn, or a failed one when SLURM ended the job before it returned."""
        import submitit

        overrides, _, number = arguments[:3]
        try:
            return job.results()[0]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as error:
            state = job.state
            lost = SlurmError(
                f"SLURM job {job.job_id} ({' '.join(filter_overrides(overrides))}) ended without a result "
                f"(state {state}): see {job.paths.stderr} and {job.paths.stdout}. {str(error).splitlines()[0]}"
            )
        log.error("%s", lost)
        self._record_lost(number, overrides, lost)
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=lost)

    def _record_lost(self, number: int, overrides: list[str], error: BaseException) -> None:
        """The sweep summary's entry of a job that could not record its own outcome."""
        from fer.run.config import job_folder_name, sweep_varied_keys
        from fer.run.sweep import job_entry, write_job_entry

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        folder = job_folder_name(number, overrides, sweep_varied_keys(self.config.hydra))
        write_job_entry(sweep_dir, job_entry(number, folder, overrides, error, None))
