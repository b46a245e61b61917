"""Every command of the README runs, in order, as a new user would run it, in a fresh folder.

The commands are read from the README's ``bash`` and ``python`` blocks. What needs MMAFEDB, downloaded
weights, a GPU or hours is substituted by tiny local stand-ins, and every substitution is listed in
:data:`SUBSTITUTIONS` (printed with a failure): the README's own text is what runs otherwise.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NO_FIGURES, fer_main

from fer.run.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"

# (what the README says, what runs instead, why)
SUBSTITUTIONS = [
    (
        "data/MMAFEDB (the default data)",
        "a tiny generated tree in the MMAFEDB layout at data/MMAFEDB",
        "MMAFEDB is not downloadable here",
    ),
    (
        "model.pretrained=true (the default)",
        "model.pretrained=false",
        "ImageNet weights are not downloadable here",
    ),
    ("a training command", "+ 1 epoch of 2 batches (1 for valid and test), 32 px", "minutes -> seconds"),
    (
        "a training command's TensorBoard figures",
        "left out (~callbacks.confusion_matrix ...)",
        "a tenth of these runs; tests/test_entrypoints.py checks the figures",
    ),
    (
        "experiment=quickstart",
        "+ data.synthetic.train_per_class=8 data.synthetic.eval_per_class=4",
        "a smaller drawn data set",
    ),
    (
        "trainer=gpu / ddp without a GPU",
        "the one-line error that names trainer=cpu is expected",
        "no GPU here",
    ),
    ("hparams_search=optuna [hparams_search.n_trials=N]", "hparams_search.n_trials=2", "fewer trials"),
    ("trainer.max_epochs=30", "trainer.max_epochs=2", "the run it extends has 1 epoch"),
    (
        "<run>, <time>",
        "the newest run / sweep folder made by the commands above (for --over seed: the newest seed sweep)",
        "placeholders",
    ),
    ("my_faces, /another/copy/of/MMAFEDB", "copies of the tiny tree", "the user's own data"),
    (
        "face.jpg, face1.jpg, photos/, more/, group.jpg",
        "drawn faces; the astronaut photo of scikit-image",
        "the user's own images",
    ),
    ("last.ckpt", "the last checkpoint of the newest run", "the user's own checkpoint"),
    ("A.ckpt, B.ckpt", "the last checkpoints of the two newest runs", "the user's own checkpoints"),
    ("data=fer2013,ferplus,rafdb,affectnet", "data=fer2013,rafdb", "half the evaluation jobs"),
    ("--out /tmp/faces --per-class 200", "--out <tmp>/faces --per-class 2", "smaller"),
    (
        "pip install ...",
        "not run: CI itself installs the project this way (.ci/run)",
        "no installs inside tests",
    ),
    ("pytest", "not run: this test is part of it", "recursion"),
    (
        "clip.mp4",
        "a 12-frame video of drawn faces and the astronaut photo, written with OpenCV",
        "the user's video",
    ),
    (
        "--camera 0",
        "the same command in-process, with fer.infer.video.camera_capture opening clip.mp4",
        "no webcam",
    ),
    (
        "python -m fer.demo MODEL",
        "+ --port <free>; the page is fetched, then the server stopped",
        "a server",
    ),
    (
        "hydra/launcher=slurm [-m, a,b sweeps]",
        "composed and printed with --cfg hydra (first value of each sweep), not submitted",
        "2 nodes x 4 GPUs are not here (tests/test_slurm.py submits to CI's one-node cluster)",
    ),
    (
        "jupyter lab notebooks/results.ipynb",
        "not run: tests/test_results.py executes the notebook headless (nbclient) on a run and checks it",
        "no browser; the notebook's kernel start once is enough",
    ),
    (
        "tensorboard --logdir outputs",
        "+ --host 127.0.0.1 --port <free>; the page is fetched, then the server stopped",
        "a server",
    ),
    (
        "python -m fer.bench --quick",
        "python -m fer.bench --rows fer/pack --images 64 --seconds 1 --data data/MMAFEDB",
        "seconds, not minutes (and not the bench's own 4,662 generated faces)",
    ),
]

TRAIN_LIMITS = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                "+trainer.limit_test_batches=1"]  # fmt: skip
TINY = [
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "+trainer.enable_progress_bar=false",
]


@dataclass
class Command:
    line: int
    text: str


def readme_commands() -> list[Command]:
    """The commands of the README's bash blocks (``&&`` chains split), and each python block as one."""
    commands: list[Command] = []
    lines = README.read_text().splitlines()
    block: str | None = None
    start = 0
    buffer: list[str] = []
    for number, line in enumerate(lines, 1):
        if block is None and line.startswith("```") and line[3:].strip() in ("bash", "python"):
            block, start, buffer = line[3:].strip(), number, []
            continue
        if block is not None and line.startswith("```"):
            if block == "python":
                commands.append(Command(start + 1, "\n".join(buffer)))
            block = None
            continue
        if block == "bash":
            code = shlex.split(line, comments=True)
            if code:
                for part in " ".join(shlex.quote(c) for c in code).split(" '&&' "):
                    commands.append(Command(number, part))
        elif block == "python":
            buffer.append(line)
    return commands


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Session:
    """The folder a new user works in: their data under data/, their runs under outputs/."""

    def __init__(self, root: Path, tiny_data: Path) -> None:
        self.root = root
        self.outputs = root / "outputs"
        self.data = root / "data"
        shutil.copytree(tiny_data, self.data / "MMAFEDB")
        shutil.copytree(tiny_data, root / "my_faces")
        self.env = {"FER_DATA_DIR": str(self.data)}
        self._images()

    def _images(self) -> None:
        import numpy as np
        from PIL import Image
        from skimage import data as skdata

        faces = sorted((self.data / "MMAFEDB" / "test").rglob("*.png"))
        for name, source in zip(("face.jpg", "face1.jpg", "face2.png"), faces, strict=False):
            Image.open(source).convert("RGB").save(self.root / name)
        for folder in (self.root / "photos", self.root / "more" / "nested"):
            folder.mkdir(parents=True)
            for source in faces[:3]:
                shutil.copy(source, folder / source.name)
        Image.fromarray(np.asarray(skdata.astronaut())).save(self.root / "group.jpg")
        self._clip(faces[:6])

    def _clip(self, faces: list[Path]) -> None:
        import cv2
        import numpy as np
        from PIL import Image

        frames = [np.asarray(Image.open(self.root / "group.jpg").convert("RGB").resize((320, 320)))] * 6
        frames += [np.asarray(Image.open(face).convert("RGB").resize((320, 320))) for face in faces]
        writer = cv2.VideoWriter(str(self.root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 6, (320, 320))
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()

    def newest(self, pattern: str) -> Path:
        found = sorted(self.outputs.glob(pattern), key=lambda p: p.stat().st_mtime)
        assert found, f"no {pattern} yet: the README uses one before making it"
        return found[-1]

    def newest_checkpoints(self, count: int) -> list[Path]:
        found = sorted(
            self.outputs.glob("train/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        assert len(found) >= count, f"fewer than {count} runs yet"
        return found[-count:]

    def newest_run(self) -> Path:
        return self.newest("train/runs/*/checkpoints/last.ckpt").parent.parent

    def substitute(self, text: str) -> str:
        if "<run>" in text:
            text = text.replace("outputs/train/runs/<run>", str(self.newest_run()))
            text = text.replace("<run>", str(self.newest_run()))
        if (
            "<time>" in text and "--over seed" in text
        ):  # the newest sweep over seeds (later sweeps vary other keys)
            text = text.replace(
                "outputs/train/multiruns/<time>", str(self.newest("train/multiruns/*/*seed=*").parent)
            )
        for kind in ("train", "eval"):
            if f"outputs/{kind}/multiruns/<time>" in text:
                newest = str(self.newest(f"{kind}/multiruns/*"))
                text = text.replace(f"outputs/{kind}/multiruns/<time>", newest)
        text = text.replace("data=fer2013,ferplus,rafdb,affectnet", "data=fer2013,rafdb")
        if "A.ckpt" in text:
            a, b = self.newest_checkpoints(2)
            text = text.replace("A.ckpt", str(a)).replace("B.ckpt", str(b))
        text = text.replace("/another/copy/of/MMAFEDB", str(self.root / "my_faces"))
        text = (
            text.replace("last.ckpt ", f"{self.newest_run() / 'checkpoints' / 'last.ckpt'} ", 1)
            if text.startswith(("python -m fer.predict last.ckpt", "python -m fer.export last.ckpt"))
            else text
        )
        return text.replace("/tmp/faces --per-class 200", f"{self.root / 'faces'} --per-class 2")


def train_overrides(args: list[str]) -> list[str]:
    """Tiny, offline stand-ins for a README training command (see SUBSTITUTIONS)."""
    args = [a for a in args if not a.startswith("hparams_search.n_trials=")]
    if "hparams_search=optuna" in args:
        args.append("hparams_search.n_trials=2")
    args = ["trainer.max_epochs=2" if a == "trainer.max_epochs=30" else a for a in args]
    if any(a.startswith("--") for a in args):
        return args  # --help, --cfg job: nothing runs
    extra = [*TINY, *NO_FIGURES, "model.pretrained=false"]
    if "experiment=quickstart" in args:
        extra += ["data.synthetic.train_per_class=8", "data.synthetic.eval_per_class=4"]
    resuming = any(a.startswith("resume=") for a in args)
    if resuming or "debug=fdr" in args:
        return [*args, *extra]
    if not any(a.startswith("debug=") for a in args):
        extra += TRAIN_LIMITS  # 1 epoch of 4 batches: real checkpoints for the commands that follow
    return [*args, *extra]


def run(session: Session, command: Command) -> str | None:
    """Run one README command; returns why it was not run, or None. Fails the test if the command fails."""
    text = session.substitute(command.text)
    if command.text.startswith("from ") or "\n" in command.text:  # a python block, run in this process
        script = text.replace('"last.ckpt"', repr(str(session.newest_run() / "checkpoints" / "last.ckpt")))
        previous = Path.cwd()
        os.chdir(session.root)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(script, str(README), "exec"), {})
        finally:
            os.chdir(previous)
        return None
    args = shlex.split(text)
    env_assignments = {}
    while args and re.fullmatch(r"[A-Z_]+=.*", args[0]):
        key, value = args.pop(0).split("=", 1)
        env_assignments[key] = value
    program = args[0]
    if program in ("pip", "pytest"):
        return "see SUBSTITUTIONS"
    if program in ("python3", "."):  # making and entering a virtual environment: real, in the user's folder
        shell = text if program == "." else f"{sys.executable} {text.split(' ', 1)[1]} --without-pip"
        done = subprocess.run(
            ["bash", "-c", shell], cwd=session.root, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return None
    if program == "jupyter":
        return "see SUBSTITUTIONS"
    if program == "tensorboard":
        return tensorboard(session, args)
    if program == "ruff":
        done = subprocess.run(
            [sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout[-3000:]
        return None
    assert program == "python" and args[1] == "-m", text
    module, rest = args[2], args[3:]
    if module in ("fer.train", "fer.eval"):
        rest = (
            train_overrides(rest) if module == "fer.train" else [*rest, "+trainer.enable_progress_bar=false"]
        )
    if module == "fer.bench":
        rest = ["--rows", "fer/pack", "--images", "64", "--seconds", "1", "--data", f"{session.data}/MMAFEDB"]
    if "hydra/launcher=slurm" in rest:
        return slurm_composition(session, rest)
    if "--camera" in rest:
        return camera(session, rest)
    if module == "fer.demo":
        return demo(session, rest)
    result = fer_main(
        module, *rest, outputs=session.outputs, cwd=session.root, env={**session.env, **env_assignments}
    )
    if "trainer=gpu" in rest or "trainer=ddp" in rest:
        import torch

        if not torch.cuda.is_available():
            assert result.returncode == 2 and "trainer=cpu" in result.stderr, result.stderr[-2000:]
            return None
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 0, (text, rest, errors[-3:], result.stdout[-1500:])
    return None


def slurm_composition(session: Session, args: list[str]) -> None:
    """A SLURM sweep command, composed and printed (``--cfg hydra``) instead of submitted."""
    args = [a.split(",")[0] if "=" in a and "," in a else a for a in args if a not in ("-m", "--multirun")]
    result = fer_main("fer.train", *args, "--cfg", "hydra", outputs=session.outputs, cwd=session.root)
    assert result.returncode == 0 and "SlurmLauncher" in result.stdout, result.stderr[-2000:]


def camera(session: Session, args: list[str]) -> None:
    """A ``--camera`` command with the camera opened on clip.mp4 (fer.infer.video.camera_capture)."""
    import cv2

    import fer.infer.video as video

    clip = str(session.root / "clip.mp4")
    opened, video.camera_capture = video.camera_capture, lambda index: cv2.VideoCapture(clip)
    try:
        result = fer_main("fer.predict", *args, outputs=session.outputs, cwd=session.root)
    finally:
        video.camera_capture = opened
    assert result.returncode == 0, result.stderr[-2000:]


def demo(session: Session, args: list[str]) -> None:
    port = free_port()
    log = session.root / "demo.log"
    with log.open("w") as printed:
        server = subprocess.Popen(
            [sys.executable, "-m", "fer.demo", *args, "--port", str(port)], cwd=session.root,
            stdout=printed, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        page = wait_for_page(server, f"http://127.0.0.1:{port}/", log)
        assert "gradio" in page.lower(), page[:500]
    finally:
        server.terminate()
        server.wait(timeout=30)


LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server, never through a proxy


def wait_for_page(server: subprocess.Popen, url: str, log: Path, seconds: float = 180) -> str:
    """The page at ``url`` once the server answers; if it never does, what it printed (``log``) says why."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with LOCAL.open(url, timeout=5) as answer:
                return answer.read().decode()
        except OSError as error:
            alive, waited = server.poll() is None, time.monotonic() < deadline
            assert alive and waited, (
                f"no answer at {url} ({error!r}; exit code {server.poll()}); the server printed:\n"
                + log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.5)


def tensorboard(session: Session, args: list[str]) -> None:
    port = free_port()
    tensorboard_bin = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    log = session.root / "tensorboard.log"
    with log.open("w") as printed:
        server = subprocess.Popen(
            [tensorboard_bin, *args[1:], "--host", "127.0.0.1", "--port", str(port)], cwd=session.root,
            stdout=printed, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        runs = wait_for_page(server, f"http://127.0.0.1:{port}/data/runs", log, 300)
        assert "train/runs" in runs, runs
    finally:
        server.terminate()
        server.wait(timeout=30)
    return None


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tiny_data, tmp_path):
    session = Session(tmp_path / "user", tiny_data)
    commands = readme_commands()
    assert len(commands) > 30
    skipped, seconds = [], []
    ran: set[str] = set()
    for command in commands:
        if command.text in ran:  # the same command again (the results section repeats the seed sweep)
            continue
        ran.add(command.text)
        start = time.perf_counter()
        try:
            why = run(session, command)
            seconds.append((round(time.perf_counter() - start, 1), command.text[:80]))
        except AssertionError as failure:
            table = "\n".join(f"  {a} -> {b} ({c})" for a, b, c in SUBSTITUTIONS)
            raise AssertionError(
                f"README line {command.line}: {command.text}\n{failure}\nsubstitutions:\n{table}"
            ) from None
        if why:
            skipped.append(command.text)
    not_run = ("pip", "pytest", "jupyter")  # each one in SUBSTITUTIONS
    assert all(next(w for w in text.split() if "=" not in w) in not_run for text in skipped), skipped
    print("slowest README commands:", sorted(seconds, reverse=True)[:8])
