"""Run the ``prunekit`` command line in a process that SIGKILLs itself at a chosen point, or
that logs every file it writes: the fault and distributed tests launch it as a real
subprocess (alone or under torchrun), so a kill is a real kill at an exact, repeatable place
rather than a race against a polling loop.

    python tests/harness.py [--kill SPEC] [--kill-rank R] [--log-writes FILE] -- ARGS...

or, without an interpreter start-up per kill, :func:`arm` in a forked child (see
``tests/processes.py``).

SPEC is one of
    step:STAGE:EPOCH:STEP   just after optimizer step STEP of epoch EPOCH (both from 1) of
                            trainer stage STAGE (pretrain, prune, retrain, quantize, qretrain)
    write:NAME:K            halfway through writing the K-th file named NAME (a temp file
                            is left behind half written, the destination untouched)
    after-write:NAME:K      just after the K-th file named NAME is in place
    call:MODULE:QUALNAME:K  just after the K-th return of a function (e.g. the hardening
                            ``prunekit.methods.base:PruningMethod.freeze``)
Counts are per process: each resumed process counts again from zero. Only rank R (default
0; the ``RANK`` variable that torchrun sets) kills itself; every rank logs its writes.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _install_writes(kill: list[str] | None, log: str | None) -> None:
    import prunekit.files as pio

    original = pio.atomic_write
    seen: dict[str, int] = {}

    def atomic_write(path, write):
        path = Path(path)
        seen[path.name] = seen.get(path.name, 0) + 1
        if log:
            with open(log, "a") as f:  # one short line per write: appends do not interleave
                f.write(json.dumps({"rank": _rank(), "path": str(path)}) + "\n")
        due = kill is not None and kill[1] == path.name and seen[path.name] == int(kill[2])
        if due and kill[0] == "write":
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()

            def half(f):
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()

            return original(path, half)
        result = original(path, write)
        if due:
            _die()
        return result

    pio.atomic_write = atomic_write


def _install_steps(stage: str, epoch: int, step: int) -> None:
    from prunekit.training import trainer

    where = {"stage": None, "epoch": 0, "step": 0}
    run_epoch = trainer.Trainer._run_epoch

    def tracked(self, e):
        where.update(stage=self.stage, epoch=e + 1, step=0)
        return run_epoch(self, e)

    def after_step(optimizer, args, kwargs):
        where["step"] += 1
        if (where["stage"], where["epoch"], where["step"]) == (stage, epoch, step):
            _die()

    trainer.Trainer._run_epoch = tracked
    register_optimizer_step_post_hook(after_step)


def _install_call(module: str, qualname: str, k: int) -> None:
    owner = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, name)
    calls = [0]

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        calls[0] += 1
        if calls[0] == k:
            _die()
        return result

    setattr(owner, name, wrapped)


def arm(kill: str | None, log: str | os.PathLike | None = None, kill_rank: int = 0) -> None:
    """Patch this process so that it dies at ``kill`` (module docstring) and logs its
    writes to ``log``; the tests call it in a forked child, the command line below in a
    fresh interpreter."""
    torch.set_num_threads(1)
    spec = kill.split(":") if kill and _rank() == kill_rank else None
    write_kill = spec if spec and spec[0] in ("write", "after-write") else None
    _install_writes(write_kill, None if log is None else str(log))
    if spec and spec[0] == "step":
        _install_steps(spec[1], int(spec[2]), int(spec[3]))
    elif spec and spec[0] == "call":
        _install_call(spec[1], spec[2], int(spec[3]))
    elif spec and not write_kill:
        raise SystemExit(f"unknown kill spec {kill!r}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill")
    parser.add_argument("--kill-rank", type=int, default=0)
    parser.add_argument("--log-writes")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    arm(options.kill, options.log_writes, options.kill_rank)
    from prunekit.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
