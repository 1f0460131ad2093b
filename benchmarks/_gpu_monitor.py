"""GPU utilisation while a benchmark runs: `nvidia-smi dmon` sampled every second into a file, summarised as the
mean SM utilisation per GPU (where nvidia-smi exists; a CPU run gets None)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any


def start_dmon(path: Path | None) -> Any:
    """`nvidia-smi dmon` writing into `path` from now on; None without nvidia-smi or a path."""
    if path is None or shutil.which("nvidia-smi") is None:
        return None
    handle = open(path, "w")
    return subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"], stdout=handle, stderr=subprocess.STDOUT), path


def stop_dmon(dmon: Any) -> dict[str, Any] | None:
    """Mean SM utilisation per GPU over the samples where any GPU was busy."""
    if dmon is None:
        return None
    process, path = dmon
    process.terminate()
    process.wait(timeout=10)
    sm: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0].isdigit() and parts[1].isdigit():
            sm.setdefault(parts[0], []).append(int(parts[1]))
    return {"file": path.name, "mean_sm_percent": {gpu: statistics.mean(v) for gpu, v in sm.items() if v}}
