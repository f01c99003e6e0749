"""Launch ``prunekit`` in real child processes (forked from the test process, or started
fresh, alone or two under torchrun) armed by ``tests/harness.py``, with hard time limits so
that a stuck child fails its test instead of hanging the suite; and compare two run
directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from prunekit.files import load_checkpoint

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "harness.py"
#: seconds one child may take; a tiny run needs a few (the suite's own timeout is 300)
LIMIT = 240


def env() -> dict[str, str]:
    """Single-threaded children (two of them share a small machine); prunekit importable."""
    src = str(HERE.parent / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path,
            "PRUNEKIT_DIST_TIMEOUT": "120"}


def compress_args(recipe: Path, out: Path, resume: bool = False) -> list[str]:
    return ["compress", str(recipe), "--out", str(out), "--no-progress",
            *(["--resume"] if resume else [])]


def harness(args: list[str], *, kill: str | None = None, log: Path | None = None,
            nproc: int = 1, kill_rank: int = 0) -> subprocess.CompletedProcess:
    """Run the command line in a fresh child (``nproc`` > 1: under torchrun, gloo, CPU)."""
    options = [*(["--kill", kill, "--kill-rank", str(kill_rank)] if kill else []),
               *(["--log-writes", str(log)] if log else [])]
    return launch(HARNESS, [*options, "--", *args], nproc=nproc)


def launch(script: Path, args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    """``python script args`` or ``torchrun --nproc-per-node nproc script args``."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={nproc}"]
    return subprocess.run([*launcher, str(script), *args], env=env(), capture_output=True,
                          text=True, timeout=LIMIT)


def forked(args: list[str], *, kill: str | None = None) -> subprocess.CompletedProcess:
    """Run the command line in a forked child armed with ``kill``: a real process that
    really dies of SIGKILL, without the seconds an interpreter and torch take to start
    (a kill test needs dozens of them). The wait is bounded by :data:`LIMIT`."""
    import harness  # noqa: PLC0415  (patches only the child that arms it)
    from prunekit.cli import main as cli  # noqa: PLC0415

    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                sys.stdout = sys.stderr = log
                harness.arm(kill)
                code = cli(args)
            except BaseException:  # noqa: B036  (report anything, then leave)
                traceback.print_exc()
            finally:
                log.flush()
                os._exit(code)
        deadline = time.monotonic() + LIMIT
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"prunekit {' '.join(args)} ran past {LIMIT} s")
            time.sleep(0.01)
        log.seek(0)
        output = log.read()
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(done[1]), output, output)


def killed(result: subprocess.CompletedProcess) -> bool:
    """Whether the child died of SIGKILL (torchrun reports a killed worker as a failure)."""
    if result.returncode == -signal.SIGKILL:
        return True
    return result.returncode != 0 and "Signal 9 (SIGKILL)" in result.stderr


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


# ------------------------------------------------------------------ recipes
#: a tiny run: LeNet-300 on 128 synthetic 8x8 images, 4 steps per epoch
RECIPE = """\
name: {name}
seed: {seed}
model: {{name: lenet300}}
data: {{name: synthetic, batch_size: 32, test_batch_size: 64,
       options: {{n: 128, n_test: 64, input_shape: [1, 8, 8]}}}}
train: {{epochs: {train}, lr: 0.05, progress: false}}
prune:
  method: admm
  rho: 0.01
  train: {{epochs: {prune}, optimizer: adam, lr: 0.001, schedule: constant}}
  targets: [{{layers: ["fc*"], sparsity: 0.8}}]
retrain: {{epochs: {retrain}, optimizer: adam, lr: 0.0005}}
"""
QUANTIZE = """\
quantize:
  method: admm
  bits: 4
  rho: 0.01
  train: {epochs: 2, optimizer: adam, lr: 0.0005, schedule: constant}
  retrain: {mode: progressive, fix_fraction: 0.5, epochs: 2, optimizer: adam, lr: 0.0002}
"""


def tiny_recipe(name: str, seed: int, *, train: int, prune: int, retrain: int,
                quantize: bool = False) -> str:
    """Recipe text for a run of a few seconds (epochs per stage as given; ``quantize``
    adds ADMM quantization with 2 + 2 epochs)."""
    text = RECIPE.format(name=name, seed=seed, train=train, prune=prune, retrain=retrain)
    return text + (QUANTIZE if quantize else "")


# ------------------------------------------------------------------ comparing runs
TIME_KEYS = ("seconds", "wall_seconds_this_invocation")


def without_times(value: Any) -> Any:
    """A report or history with every wall-clock field left out (they differ run to run)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def report(run: Path) -> dict[str, Any]:
    return without_times(json.loads((run / "report.json").read_text()))


def weights(run: Path, artifact: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / artifact, verified=True)["state_dict"]


def assert_same_run(a: Path, b: Path, final: str) -> None:
    """Bitwise the same final weights and model file, and the same report."""
    wa, wb = weights(a, final), weights(b, final)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ bitwise: {different}"
    assert (a / "model.pkz").read_bytes() == (b / "model.pkz").read_bytes()
    assert report(a) == report(b)
