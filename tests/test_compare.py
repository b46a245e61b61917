"""``python -m fer.compare``: two checkpoints on the same test images."""

from __future__ import annotations

from conftest import assert_clean_error, fer_main


def test_a_model_compared_with_itself_differs_by_zero_with_mcnemar_p_1(checkpoint, tmp_path):
    result = fer_main("fer.compare", str(checkpoint), str(checkpoint), outputs=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert rows["B - A"].count("+0.0000 [+0.0000, +0.0000]") == 3
    assert "only A right on 0 images, only B right on 0; p = 1\n" in result.stdout
    assert "test split, 28 images" in result.stdout


def test_a_missing_checkpoint_is_one_error_line(checkpoint, tmp_path):
    result = fer_main("fer.compare", str(checkpoint), str(tmp_path / "nope.ckpt"), outputs=tmp_path)
    assert_clean_error(result, "nope.ckpt")
