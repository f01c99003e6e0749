"""A user's own model end to end through the real command line: `compress` a CNN built by
the user's factory (BatchNorm, a residual block, a depthwise conv), then `report`, `export`
and `bench` it by naming the factory (`--model`) or the run directory, and Ctrl-C during
`compress`. Everything runs in child processes started from the directory holding the
user's module, as a user would run them."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import artifacts, commands
from prunekit.errors import ConfigError, DataError

#: the console script when installed (it does not put the current directory on sys.path
#: by itself, unlike `python -m`), else the module
SCRIPT = Path(sys.executable).parent / "prunekit"
PRUNEKIT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "prunekit"]
LIMIT = 240

USER_MODULE = '''\
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(width)
        self.b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bnb = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bnd = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 2 * width, 1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        y = F.relu(self.bn0(self.stem(x)))
        y = F.relu(y + self.bnb(self.b(F.relu(self.bna(self.a(y))))))
        y = F.relu(self.bnd(self.dw(y)))
        y = F.relu(self.head(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def cnn(width=16, num_classes=10):
    return Net(width, num_classes)
'''

RECIPE = """\
name: own-cnn
seed: 0
model:
  name: mymodels:cnn
  kwargs: {width: 16, num_classes: 4}
  input_shape: [3, 12, 12]
data:
  name: synthetic
  batch_size: 32
  test_batch_size: 64
  options: {n: %(n)d, n_test: 64, input_shape: [3, 12, 12], num_classes: 4}
train: {epochs: %(epochs)d, lr: 0.05}
prune:
  method: magnitude
  train: {epochs: 1, optimizer: adam, lr: 0.001}
  targets:
    - {layers: "*", scheme: group_filter, sparsity: 0.5}
retrain: {epochs: 1, optimizer: adam, lr: 0.0005}
"""


def env() -> dict[str, str]:
    """Single-threaded children, with the current directory NOT on PYTHONPATH: the user's
    module must be found because the command names it, not because the test set a path."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}


def prunekit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PRUNEKIT, *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=LIMIT)


def user_dir(root: Path, n: int = 128, epochs: int = 1) -> Path:
    (root / "mymodels.py").write_text(USER_MODULE)
    (root / "recipe.yaml").write_text(RECIPE % {"n": n, "epochs": epochs})
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished `prunekit compress` run of the user's CNN, filter-pruned by half."""
    root = user_dir(tmp_path_factory.mktemp("user"))
    done = prunekit(root, "compress", "recipe.yaml", "--out", "run", "--no-progress")
    assert done.returncode == 0, done.stderr
    return root


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error of a failed command: exit 2, one line on stderr ending in a newline."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("prunekit: error: ")
    return done.stderr


def build_cnn(width: int = 16, num_classes: int = 4) -> torch.nn.Module:
    """The user's model, built in this process from the same source."""
    namespace: dict = {}
    exec(compile(USER_MODULE, "mymodels.py", "exec"), namespace)  # noqa: S102 (test's own code)
    return namespace["cnn"](width, num_classes)


# ---------------------------------------------------------------- report, export, bench
@pytest.mark.parametrize("command", [["report"], ["export", "--onnx", "m.onnx"],
                                     ["bench", "--repeats", "1"]])
def test_a_factory_model_file_without_the_factory_names_the_flag(run, command):
    err = one_line_error(prunekit(run, command[0], "run/model.pkz", *command[1:]))
    assert "--model mymodels:cnn" in err and "never imports code" in err


def test_report_by_model_flag_and_by_run_directory_are_the_compress_report(run):
    compressed = json.loads((run / "run" / "report.json").read_text())
    by_flag = prunekit(run, "report", "run/model.pkz", "--model", "mymodels:cnn",
                       "--out", "again")
    assert by_flag.returncode == 0, by_flag.stderr
    by_dir = prunekit(run, "report", "run", "--out", "again_dir")
    assert by_dir.returncode == 0, by_dir.stderr
    for out in ("again", "again_dir"):
        again = json.loads((run / out / "report.json").read_text())
        assert again["params"] == compressed["params"]
        assert again["bytes"] == compressed["bytes"]
        assert again["accuracy"] == compressed["accuracy"]
    # the run directory also gives what only the run knew: its history, and the plot
    assert json.loads((run / "again_dir" / "report.json").read_text())["history"] == \
        compressed["history"]
    assert (run / "again_dir" / "training.png").is_file()
    assert not (run / "again" / "training.png").exists()


def test_model_kwargs_override_the_recorded_ones(run):
    """The file records width 16; a factory called with width 8 builds another
    architecture, which the file refuses in one line."""
    err = one_line_error(prunekit(run, "report", "run/model.pkz", "--model", "mymodels:cnn",
                                  "--model-kwargs", "{width: 8, num_classes: 4}"))
    assert "another architecture" in err
    err = one_line_error(prunekit(run, "report", "run/model.pkz", "--model", "mymodels:cnn",
                                  "--model-kwargs", "[8]"))
    assert "--model-kwargs must be a mapping" in err
    err = one_line_error(prunekit(run, "report", "run/model.pkz", "--model", "nosuch:cnn"))
    assert "no module named 'nosuch'" in err


def test_bench_by_model_flag_prints_dense_and_compiled(run):
    done = prunekit(run, "bench", "run/model.pkz", "--model", "mymodels:cnn",
                    "--repeats", "2", "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert "dense" in done.stdout and "compiled" in done.stdout


def test_python_callers_pass_the_model_or_name_the_factory(run, monkeypatch):
    monkeypatch.syspath_prepend(str(run))
    path = run / "run" / "model.pkz"
    with pytest.raises(DataError, match="--model mymodels:cnn"):
        commands.load_model_file(path)
    lines: list[str] = []
    by_object = commands.report(path, model=build_cnn(), echo=lines.append)
    by_name = commands.report(path, model_spec="mymodels:cnn", echo=lines.append)
    assert by_object["params"] == by_name["params"]
    bench = commands.bench(run / "run", repeats=1, echo=lines.append)
    assert bench["dense_ms"] > 0 and bench["compiled_ms"] > 0
    with pytest.raises(ConfigError, match="needs --model"):
        commands.report(path, model_kwargs={"width": 8})


# ---------------------------------------------------------------------------- ONNX
def test_onnx_export_is_deployable_as_is(run):
    """Exported from batch 1: onnxruntime runs batch 8; the dead channels of the pruned
    filters are gone (smaller file, same outputs); nothing but the result is printed."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    shrunk = prunekit(run, "export", "run", "--onnx", "small.onnx")
    full = prunekit(run, "export", "run", "--onnx", "full.onnx", "--no-shrink")
    for done in (shrunk, full):
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr  # no torchvision or exporter warnings
        assert done.stdout.count("\n") == 1 and "dynamic batch" in done.stdout
    assert "dead channels removed" in shrunk.stdout and "full size" in full.stdout
    small_bytes = (run / "small.onnx").stat().st_size
    full_bytes = (run / "full.onnx").stat().st_size
    assert small_bytes < 0.8 * full_bytes

    model = artifacts.load(run / "run" / "model.pkz", model=build_cnn()).model.eval()
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    for name in ("small.onnx", "full.onnx"):
        session = ort.InferenceSession(str(run / name), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == (8, 4)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    static = prunekit(run, "export", "run", "--onnx", "static.onnx", "--static-batch")
    assert static.returncode == 0 and "fixed batch" in static.stdout
    session = ort.InferenceSession(str(run / "static.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 1


# -------------------------------------------------------------------------- Ctrl-C
def default_sigint() -> None:
    """Ctrl-C's default action in the child, as at a terminal: a shell starts background
    jobs (a suite run with `&`) with SIGINT ignored, which Python then keeps ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_compress_prints_the_resume_command(tmp_path):
    """SIGINT while the dense model trains: exit 130 and one line with the exact command
    that continues the run, no traceback."""
    root = user_dir(tmp_path, n=2048, epochs=40)
    args = ["compress", "recipe.yaml", "--out", "my run", "--no-progress"]
    child = subprocess.Popen([*PRUNEKIT, *args], cwd=root, env=env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=default_sigint)
    checkpoint = root / "my run" / "ckpt" / "pretrain.pt"
    deadline = time.monotonic() + LIMIT
    try:  # the first epoch's checkpoint: training is under way
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        running = child.poll() is None
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=LIMIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert checkpoint.exists() and running, (out, err)
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    expected = shlex.join(["prunekit", *args, "--resume"])
    assert err.strip().splitlines()[-1] == f"prunekit: interrupted; continue with: {expected}"
