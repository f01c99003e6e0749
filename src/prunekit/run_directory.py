"""A run directory is one run: never mixed with another plan, never overwritten unasked.

The directory records the resolved plan of its run (``recipe.yaml``: the recipe with every
default filled in). Before anything runs:

- ``--resume`` into a directory whose recorded plan differs from this one is refused,
  naming the first key that differs (settings that do not change what is computed, such
  as ``progress`` or ``on_nan``, may change), because the finished stages were made by the recorded
  plan and the rest would be made by another (a report would then describe a configuration
  that never produced the model);
- a fresh run into a directory that already holds a run (its plan, a stage artifact, a
  checkpoint or a report) is refused, because it would silently replace that result;
- ``force`` overrides both: a resume takes the new plan from there on, a fresh run first
  removes the earlier run's files (only the files a run writes).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .training.trainer import RESUME_FREE_KEYS

#: the file that records a run's resolved plan
PLAN_FILE = "recipe.yaml"
#: every file and folder a run writes, so a forced fresh run removes exactly those
RUN_FILES = ("recipe.yaml", "dense.pt", "oneshot.pt", "pruned.pt", "retrained.pt",
             "quantized.pt", "qretrained.pt", "model.pkz", "model-hf", "report.json",
             "report.md", "ckpt")
#: a run's plots: ``*.png`` written by the report
PLOTS = "*.png"


def first_difference(before: Any, now: Any,
                     path: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """``(dotted key, value before, value now)`` of the first place two plans differ (in
    the order of ``now``'s keys, then keys only ``before`` has), or None when equal. Keys
    that change how a run is shown or where it runs, not what it computes
    (:data:`~prunekit.training.trainer.RESUME_FREE_KEYS`, e.g. ``on_nan`` to skip the
    batch a NaN stopped on), may differ."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in [*now, *(k for k in before if k not in now)]:
            if key in RESUME_FREE_KEYS:
                continue
            found = first_difference(before.get(key), now.get(key), (*path, str(key)))
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        for i, (a, b) in enumerate(zip(before, now, strict=True)):
            found = first_difference(a, b, (*path, str(i)))
            if found:
                return found
        return None
    if before != now or type(before) is not type(now) and not _same_number(before, now):
        return ".".join(path) or "<plan>", before, now
    return None


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def existing_run(out: Path) -> list[str]:
    """The files of an earlier run in ``out``: empty when it holds none, or only the plan
    of a run that computed nothing yet (it stopped before its first checkpoint), which
    nothing is lost by replacing."""
    if not out.is_dir():
        return []
    found = [name for name in RUN_FILES if (out / name).exists()]
    found += sorted(p.name for p in out.glob(PLOTS))
    return found if set(found) - {PLAN_FILE} else []


def check_directory(out: Path, plan: Mapping[str, Any], *, resume: bool, force: bool,
                    read_plan: Any) -> str | None:
    """Refuse (``ConfigError``) to mix or overwrite a run in ``out`` (see the module
    docstring); returns a line to tell the user when ``force`` overrode something.
    ``read_plan(text)`` parses the recorded plan (the recipe's own YAML reader)."""
    found = existing_run(out)
    if not found:
        return None
    recorded = out / PLAN_FILE
    if resume:
        if not recorded.is_file():
            return None
        difference = first_difference(read_plan(recorded.read_text()), plan)
        if difference is None:
            return None
        key, before, now = difference
        if force:
            return (f"resuming {out} with another plan (--force): {key} was {before!r}, "
                    f"now {now!r}; the finished stages were made with the old value")
        raise ConfigError(
            f"{out} was run with another plan: {key} was {before!r}, now {now!r}. Resume "
            f"with the same recipe and --set options, pass --force to continue with the new "
            f"plan anyway, or use another --out")
    if not force:
        finished = "a finished" if (out / "report.json").exists() else "an unfinished"
        raise ConfigError(
            f"{out} already holds {finished} run ({', '.join(found[:6])}"
            f"{', ...' if len(found) > 6 else ''}): pass --resume to continue it, --force to "
            f"replace it, or choose another --out")
    for name in found:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return f"replaced the earlier run in {out} (--force)"
