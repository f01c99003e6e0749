"""Times ONNX models in DeepSparse 1.8.0; run by bench/inference.py inside the venv that
bench/deepsparse_venv.sh sets up (DeepSparse needs numpy < 2 and an old onnx, so it cannot
share the main venv).

    python bench/deepsparse_worker.py JOBS.json OUT.json

Each job: ``{"key", "onnx", "shape", "threads", "min_seconds"}``; every result is
``{"key", "ms"}`` (median of timed calls after warm-up) or ``{"key", "error"}`` when the
engine cannot compile the model.
"""

import json
import sys
import time

import numpy as np


def main() -> None:
    import deepsparse

    jobs = json.load(open(sys.argv[1]))
    out = []
    for job in jobs:
        try:
            x = np.random.default_rng(0).standard_normal(job["shape"]).astype(np.float32)
            engine = deepsparse.Engine(model=job["onnx"], batch_size=job["shape"][0],
                                       num_cores=job["threads"])
            for _ in range(3):
                engine.run([x])
            times, start = [], time.perf_counter()
            while len(times) < 7 or (time.perf_counter() - start < job["min_seconds"]
                                     and len(times) < 200):
                t = time.perf_counter()
                engine.run([x])
                times.append(time.perf_counter() - t)
            times.sort()
            out.append({"key": job["key"], "ms": 1e3 * times[len(times) // 2]})
        except Exception as exc:  # a model the engine does not load: recorded, not fatal
            out.append({"key": job["key"], "error": f"{type(exc).__name__}: {exc}"[:300]})
        json.dump(out, open(sys.argv[2], "w"))
    print(f"deepsparse {deepsparse.__version__}: {len(out)} jobs")


if __name__ == "__main__":
    main()
