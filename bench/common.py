"""Shared bits of the benchmark scripts: machine description, result writing, and the weight
shapes of ResNet-50 (timed without building the model)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from prunekit.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    except OSError:
        pass
    # Same model name, different timings: the widest vector unit is what the kernels use.
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2", "asimd") if f in flags), None)
    if simd:
        cpu = f"{cpu} ({simd})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.date.today().isoformat(),
        "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write_json(name: str, payload: Any) -> Path:
    return atomic_write_text(RESULTS / name, json.dumps(payload, indent=2) + "\n")


def header(title: str, meta: dict[str, Any] | None = None, cmd: str | None = None) -> str:
    """The results file's opening lines; ``meta``/``cmd`` are the measuring run's, where a
    replot writes the file again later (or on another machine)."""
    m = meta or machine()
    return (
        f"# {title}\n\n"
        f"- command: `{cmd or command()}`\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}\n"
        f"- date: {m['date']}\n"
        f"- load average when written (1/5/15 min): {m['load_average']}\n"
    )


def measured_by(rows: list[dict[str, Any]]) -> str:
    """The closing lines of a results table: every command that measured one of its rows."""
    commands = dict.fromkeys(r.get("command", "?") for r in rows)
    return "\n\nThe rows were measured by:\n\n" + "".join(f"- `{c}`\n" for c in commands)


def resnet50_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of every conv and linear weight of torchvision's ResNet-50."""
    shapes = [("conv1", (64, 3, 7, 7))]
    inplanes = 64
    for stage, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], 1):
        for b in range(blocks):
            prefix = f"layer{stage}.{b}"
            shapes += [
                (f"{prefix}.conv1", (planes, inplanes, 1, 1)),
                (f"{prefix}.conv2", (planes, planes, 3, 3)),
                (f"{prefix}.conv3", (planes * 4, planes, 1, 1)),
            ]
            if b == 0:
                shapes.append((f"{prefix}.downsample.0", (planes * 4, inplanes, 1, 1)))
            inplanes = planes * 4
    shapes.append(("fc", (1000, 2048)))
    return shapes


def load_json(path: Path, default: Any) -> Any:
    """A results file's contents, or ``default`` before the first row is written."""
    return json.loads(path.read_text()) if path.exists() else default


def run_row(cmd: list[str]) -> dict[str, Any] | None:
    """Run one benchmark row as its own process (its peak memory is its own) and return the
    JSON it prints last, echoing the command and the row; None (stderr shown) if it failed."""
    print(" ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-3000:], flush=True)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result["row"]), flush=True)
    return result
