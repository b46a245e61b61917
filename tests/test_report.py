"""``fer.report``: sweep folders (grid, Optuna, failed jobs) and single runs to tables and group means."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import TINY, fer_main

from fer.report import load_sweep, main

TRAIN_LOG_ERROR = "[2026-11-28 06:10:24,143][fer.runtime][ERROR] - freeze.trainable_blocks=99 is out of range"


def make_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    metrics: dict[str, float] | None,
    log: str = "",
    hydra: dict | None = None,
) -> Path:
    """A job folder as fer.train leaves it: ``.hydra/overrides.yaml``, and ``metrics.json`` if it finished."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"optimized_metric": "val/acc_best", "test": True})
    )
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": hydra or {"sweeper": {"params": None}}})
    )
    (job / "train.log").write_text(log)
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"metrics": metrics, "best_checkpoint": None}))
    return job


def metrics(acc: float, f1: float, best: float) -> dict[str, float]:
    return {"test/acc": acc, "test/f1_macro": f1, "val/acc_best": best, "test/recall/happy": acc / 2}


@pytest.fixture()
def grid(tmp_path: Path) -> Path:
    """2 learning rates x 2 seeds, the second seed of lr 0.01 failed."""
    sweep = tmp_path / "multiruns" / "2026-11-28_10-00-00-000000"
    common = ["data=mmafedb", "trainer.max_epochs=1"]
    make_job(
        sweep,
        "0_optimizer.lr=0.001,seed=1",
        [*common, "optimizer.lr=0.001", "seed=1"],
        metrics(0.5, 0.4, 0.55),
    )
    make_job(
        sweep,
        "1_optimizer.lr=0.001,seed=2",
        [*common, "optimizer.lr=0.001", "seed=2"],
        metrics(0.7, 0.6, 0.65),
    )
    make_job(
        sweep, "2_optimizer.lr=0.01,seed=1", [*common, "optimizer.lr=0.01", "seed=1"], metrics(0.6, 0.5, 0.75)
    )
    make_job(
        sweep, "3_optimizer.lr=0.01,seed=2", [*common, "optimizer.lr=0.01", "seed=2"], None, TRAIN_LOG_ERROR
    )
    multirun = {"hydra": {"overrides": {"task": [*common, "optimizer.lr=0.001,0.01", "seed=1,2"]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    return sweep


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``first_cell``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]


def test_report_lists_every_job_with_its_swept_values_status_and_metrics(grid, capsys):
    assert main([str(grid)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Sweep {grid}: 4 jobs, 1 failed; swept: optimizer.lr, seed")
    assert table_rows(out, "job") == [
        ["job", "optimizer.lr", "seed", "status", "best", "test/acc", "test/f1_macro", "val/acc_best"],
        ["0", "0.001", "1", "ok", "", "0.5000", "0.4000", "0.5500"],
        ["1", "0.001", "2", "ok", "", "0.7000", "0.6000", "0.6500"],
        ["2", "0.01", "1", "ok", "*", "0.6000", "0.5000", "0.7500"],
        ["3", "0.01", "2", "failed", "", "–", "–", "–"],
    ]
    assert "`*` best job, by highest val/acc_best." in out
    assert "- job 3: freeze.trainable_blocks=99 is out of range" in out


def test_over_seed_gives_mean_and_std_per_group_without_failed_runs(grid, capsys):
    assert main([str(grid), "--over", "seed", "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    std = statistics.stdev([0.5, 0.7])
    assert table_rows(out, "optimizer.lr") == [
        ["optimizer.lr", "n", "failed", "test/acc"],
        ["0.001", "2", "0", f"0.6000 ± {std:.4f}"],
        ["0.01", "1", "1", "0.6000"],
    ]
    assert main([str(grid), "--group-by", "optimizer.lr", "--metrics", "test/acc"]) == 0
    assert capsys.readouterr().out == out


def test_metric_patterns_and_csv_of_groups_keep_full_precision(grid, tmp_path, capsys):
    out_csv = tmp_path / "groups.csv"
    assert (
        main([str(grid), "--over", "seed", "--metrics", "test/recall/*,test/acc", "--csv", str(out_csv)]) == 0
    )
    assert "test/recall/happy" in capsys.readouterr().out
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == [
        "optimizer.lr", "n", "failed", "test/recall/happy mean", "test/recall/happy std", "test/acc mean",
        "test/acc std",
    ]  # fmt: skip
    assert float(rows[0]["test/acc mean"]) == pytest.approx(0.6)
    assert float(rows[0]["test/acc std"]) == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert (rows[1]["n"], rows[1]["failed"], rows[1]["test/acc std"]) == ("1", "1", "")


def test_csv_of_jobs_has_one_row_per_job_with_status_and_error(grid, tmp_path):
    out_csv = tmp_path / "jobs.csv"
    assert main([str(grid), "--csv", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["job"], r["optimizer.lr"], r["seed"], r["status"], r["best"]) for r in rows] == [
        ("0_optimizer.lr=0.001,seed=1", "0.001", "1", "ok", "False"),
        ("1_optimizer.lr=0.001,seed=2", "0.001", "2", "ok", "False"),
        ("2_optimizer.lr=0.01,seed=1", "0.01", "1", "ok", "True"),
        ("3_optimizer.lr=0.01,seed=2", "0.01", "2", "failed", "False"),
    ]
    assert rows[1]["test/acc"] == "0.7" and rows[3]["test/acc"] == ""
    assert rows[3]["error"].startswith("freeze.trainable_blocks=99")


def test_optuna_best_trial_comes_from_optimization_results(tmp_path, capsys):
    sweep = tmp_path / "optuna"
    params = {
        "params": {"optimizer.lr": "tag(log, interval(0.0001, 0.03))", "freeze": "choice(none, partial)"}
    }
    hydra = {"sweeper": {**params, "direction": "maximize"}}
    lrs = [0.001078981681647174, 0.0007177873855741623, 0.000116907504240694]
    for number, (lr, freeze, acc) in enumerate(
        zip(lrs, ["none", "partial", "none"], [0.5, 0.9, 0.6], strict=True)
    ):
        make_job(
            sweep,
            f"{number}_optimizer.lr={lr},freeze={freeze}",
            [f"optimizer.lr={lr}", f"freeze={freeze}", "hparams_search=optuna"],
            metrics(acc, acc, acc),
            hydra=hydra,
        )
    # Optuna's own record wins over the metric (here it names the third trial, not the highest)
    results = {"name": "optuna", "best_params": {"optimizer.lr": lrs[2], "freeze": "none"}, "best_value": 0.6}
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    loaded = load_sweep(sweep)
    assert loaded.swept == ["optimizer.lr", "freeze"]
    assert [job.best for job in loaded.jobs] == [False, False, True]
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert table_rows(out, "job")[1][:4] == ["0", "0.001079", "none", "ok"]
    assert "by optimization_results.yaml (Optuna's best trial)" in out


def test_a_single_run_folder_gives_one_row(tmp_path, capsys):
    run = make_job(tmp_path, "2026-11-28_10-00-00-000000", ["seed=3"], metrics(0.25, 0.2, 0.3))
    assert main([str(run), "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out, "job") == [["job", "status", "test/acc"], [run.name, "ok", "0.2500"]]


def test_tensorboard_events_stand_in_for_a_missing_metrics_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    job = make_job(tmp_path / "sweep", "0_seed=1", ["seed=1"], None)
    make_job(tmp_path / "sweep", "1_seed=2", ["seed=2"], metrics(0.5, 0.5, 0.5))
    with SummaryWriter(str(job / "tensorboard")) as writer:
        for step, value in enumerate([0.25, 0.75]):
            writer.add_scalar("test/acc", value, step)
    loaded = load_sweep(tmp_path / "sweep")
    assert [(job.status, job.metrics.get("test/acc")) for job in loaded.jobs] == [
        ("ok (events)", 0.75),
        ("ok", 0.5),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--group-by", "nope"], "fer: error: --group-by 'nope': nope is not an override of these jobs"),
        (["--over", "data"], "fer: error: --over 'data': data is not a swept key; swept: optimizer.lr, seed"),
        (["--metrics", "val/nothing*"], "fer: error: --metrics 'val/nothing*' matches no logged metric"),
        (
            ["--metrics", "test/accc"],
            "fer: error: --metrics 'test/accc' matches no logged metric; logged: test/acc,",
        ),
    ],
)
def test_user_mistakes_end_in_one_error_line(grid, arguments, message, capsys):
    assert main([str(grid), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_a_folder_without_runs_is_a_user_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is neither a run folder" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "Folder not found" in capsys.readouterr().err


def tiny_sweep_args(data: Path) -> list[str]:
    return ["data=mmafedb", f"data.data_dir={data}", *TINY, "trainer.max_epochs=1"]


@pytest.mark.slow
def test_report_of_a_real_grid_sweep_with_failed_jobs(tiny_data, outputs, capsys):
    # freeze=partial with 99 trainable blocks fails at once (a clear error); freeze=none ignores the key
    fer_main(
        "fer.train", "-m", *tiny_sweep_args(tiny_data), "freeze=none,partial", "seed=1,2",
        "++freeze.trainable_blocks=99", outputs=outputs,
    )  # fmt: skip
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    assert main([str(sweep), "--over", "seed"]) == 0
    out = capsys.readouterr().out
    jobs = table_rows(out, "job")
    assert jobs[0][:4] == ["job", "freeze", "seed", "status"]
    assert [row[1:4] for row in jobs[1:]] == [
        ["none", "1", "ok"], ["none", "2", "ok"], ["partial", "1", "failed"], ["partial", "2", "failed"],
    ]  # fmt: skip
    column = jobs[0].index("test/acc")
    for row in jobs[1:3]:
        saved = json.loads((sweep / f"{row[0]}_freeze=none,seed={row[2]}" / "metrics.json").read_text())
        assert row[column].startswith(f"{saved['metrics']['test/acc']:.4f} [")  # with its interval
    groups = table_rows(out, "freeze")
    assert [row[:3] for row in groups] == [
        ["freeze", "n", "failed"],
        ["none", "2", "0"],
        ["partial", "0", "2"],
    ]
    assert groups[2][3:] == ["–"] * len(groups[0][3:])  # no value for any metric of the failed setting
    assert "- job 2: freeze.trainable_blocks=99 is out of range" in out
    record = json.loads((sweep / "0_freeze=none,seed=1" / ".hydra" / "run_info.json").read_text())
    started, commit = record["started"][:10], (record["git"]["commit"] or "")[:7]
    assert f"Runs: 4, started {started}; code git {commit}" in out


@pytest.mark.slow
def test_report_of_a_real_optuna_sweep_marks_its_best_trial(tiny_data, outputs, capsys):
    # sampler seed 1: the second trial draws freeze=partial, which fails (see test_entrypoints)
    fer_main(
        "fer.train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=1",
        "++freeze.trainable_blocks=99", *tiny_sweep_args(tiny_data), outputs=outputs,
    )  # fmt: skip
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    loaded = load_sweep(sweep)
    assert loaded.swept == ["optimizer.lr", "optimizer.weight_decay", "freeze", "loss.label_smoothing"]
    assert [job.status for job in loaded.jobs] == ["ok", "failed"]
    assert [job.best for job in loaded.jobs] == [True, False]
    assert loaded.best_from == "optimization_results.yaml (Optuna's best trial)"
    assert main([str(sweep)]) == 0
    assert "Sweep" in capsys.readouterr().out


def test_over_seed_shows_the_runs_bootstrap_intervals_beside_mean_and_std(tmp_path, capsys):
    sweep = tmp_path / "multiruns" / "seeds"
    for seed, (acc, low, high) in enumerate([(0.60, 0.55, 0.65), (0.70, 0.66, 0.74)]):
        found = {"test/acc": acc, "test/acc_ci_low": low, "test/acc_ci_high": high, "test/ece": 0.1 * seed}
        make_job(sweep, f"{seed}_seed={seed}", [f"seed={seed}"], {**found, "val/acc_best": acc})
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=0,1"]}}}))
    assert main([str(sweep), "--over", "seed"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out, "job")[0][4:] == ["test/acc", "test/ece", "val/acc_best"]  # the logged defaults
    assert table_rows(out, "job")[1][4:6] == ["0.6000 [0.5500, 0.6500]", "0.0000"]
    std = statistics.stdev([0.6, 0.7])
    assert table_rows(out, "n")[1][2] == f"0.6500 ± {std:.4f} [0.6050, 0.6950]"
    assert "95% bootstrap interval" in out
