"""`make bench`: every benchmark in one run; results land in benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in (
    "bench_write.py",
    "bench_speed.py",
    "bench_apply_passes.py",
    "bench_dtype.py",
    "bench_gguf.py",
    "bench_incremental.py",
    "real_model.py",
    "dev_sweep.py",
    "tune_study.py",
):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], cwd=HERE, check=True)
