"""The results notebook and the functions behind it (``fer.results``)."""

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import TINY, fer_main, run_dirs
from nbclient import NotebookClient

from fer import results
from fer.errors import FERError
from fer.run.config import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "results.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_confusion_and_recall_count_true_rows_and_predicted_columns():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    probs = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 0]), 3).float()
    predictions = results.Predictions(
        ("a", "b", "c"),
        labels,
        probs,
        torch.empty(0, 3, 8, 8),
        torch.empty(0, dtype=torch.long),
        (0.5,) * 3,
        (0.5,) * 3,
    )
    assert predictions.confusion().tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert predictions.recall().tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert predictions.accuracy == pytest.approx(4 / 6)


def test_find_runs_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(FERError, match="neither a run folder"):
        results.find_runs(tmp_path)


@pytest.mark.slow
def test_results_notebook_runs_on_a_tiny_run(tiny_data, outputs):
    args = ["data=mmafedb", f"data.data_dir={tiny_data}", *TINY, "trainer.max_epochs=2"]
    assert fer_main("fer.train", *args, outputs=outputs).returncode == 0
    (run,) = run_dirs(outputs)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["FER_RESULTS_DIR"] = str(run)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(outputs)}}
        ).execute()
    finally:
        del os.environ["FER_RESULTS_DIR"]
    figures = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert (
        len(figures) == 6
    )  # learning curves, confusion matrix, recall, reliability, worst mistakes, Grad-CAM
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    test_acc = json.loads((Path(run) / "metrics.json").read_text())["metrics"]["test/acc"]
    assert f"test accuracy {test_acc:.4f}" in text
