"""fer's Hydra launchers (``hydra/launcher=parallel`` and ``slurm``): the plugins of joblib and submitit, with
what fer's jobs need. Hydra imports this package when it looks for plugins; the launchers (modules named
with ``_``) are imported only when a config names them."""
