"""Training speed in the two memory layouts: the default NCHW vs channels-last.

``memory_format: auto`` (prunekit.training.layout) trains CPU conv models in channels-last
because oneDNN's convolutions (forward and backward) run faster on it. This measures that
claim on the zoo's conv models: milliseconds per training step (forward, backward, Adam
step) through :class:`prunekit.training.Trainer`, which converts the layout at the start of
a stage and back at its end, so the conversion is included. Random inputs (speed does not
depend on values); the two layouts alternate so that drift in machine load hits both; the
median of the repeats is reported.

    python bench/training_layout.py [--repeats 3] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import RESULTS, header, machine, write_json
from prunekit import models
from prunekit.files import atomic_write_text
from prunekit.training import Trainer

#: (model, batch, input shape of one sample, steps timed per repeat)
CASES = (("lenet5", 128, (1, 28, 28), 40), ("resnet20", 128, (3, 32, 32), 8),
         ("mobilenetv2", 64, (3, 32, 32), 6), ("vgg16", 64, (3, 32, 32), 6))
LAYOUTS = ("contiguous", "channels_last")


def ms_per_step(name: str, batch: int, shape: tuple[int, ...], steps: int,
                layout: str) -> float:
    torch.manual_seed(0)
    model = models.get(name)
    x = torch.randn(batch * (steps + 2), *shape)
    y = torch.randint(0, 10, (x.shape[0],))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    warm = Trainer(model, {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "progress": False,
                           "memory_format": layout},
                   DataLoader(TensorDataset(x[:2 * batch], y[:2 * batch]), batch_size=batch))
    warm.fit()
    trainer = Trainer(model, {"epochs": 1, "optimizer": "adam", "lr": 1e-3,
                              "progress": False, "memory_format": layout}, loader)
    start = time.perf_counter()
    trainer.fit()
    return 1e3 * (time.perf_counter() - start) / (steps + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, batch, shape, steps in CASES:
            times: dict[str, list[float]] = {k: [] for k in LAYOUTS}
            for _ in range(args.repeats):
                for layout in LAYOUTS:
                    times[layout].append(ms_per_step(name, batch, shape, steps, layout))
            median = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"model": name, "batch": batch, "threads": threads,
                         "ms_per_step": times, "median": median,
                         "speedup": median["contiguous"] / median["channels_last"]})
            print(rows[-1], flush=True)
    write_json("training_layout.json", {"rows": rows, "repeats": args.repeats,
                                        "machine": machine()})
    table = "\n".join(
        f"| {r['model']} | {r['batch']} | {r['threads']} | {r['median']['contiguous']:.1f} | "
        f"{r['median']['channels_last']:.1f} | {r['speedup']:.2f}x |" for r in rows)
    atomic_write_text(
        RESULTS / "training_layout.md",
        header("Training step time: NCHW vs channels-last")
        + f"\nOne training step (forward, backward, Adam) through prunekit's Trainer, "
        f"median of {args.repeats} interleaved repeats; random CIFAR/MNIST-shaped inputs.\n\n"
        "| model | batch | threads | NCHW ms/step | channels-last ms/step | speedup |\n"
        "|---|---|---|---|---|---|\n" + table + "\n",
    )


if __name__ == "__main__":
    main()
