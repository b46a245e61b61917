"""The launchers (and the Optuna sweeper) Hydra finds here, each where its engine's plugin is installed (``pip install 'fer[launchers]'``;
without it, a sweep that names the launcher stops with that advice before it starts)."""

from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_joblib_launcher") is not None:
    from hydra_plugins.fer_launchers._parallel_launcher import ParallelLauncher  # noqa: F401
if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.fer_launchers._slurm_launcher import SlurmLauncher  # noqa: F401
if find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    from hydra_plugins.fer_launchers._optuna_sweeper import OptunaSweeper  # noqa: F401
