"""How the Python load generator compares with wrk: the HTTP floor measured by both in one run, kept on file.

A run with wrk on PATH measures the floor with both generators; `make bench`
saves those pairs (docs/benchmarks-calibration.json), and a later run without
wrk, whose HTTP figures all come from the Python generator, quotes them in
its report, so its figures can be read against wrk's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .results import FLOOR, Run


@dataclass
class Pair:
    concurrency: int
    wrk_rps: float
    python_rps: float
    wrk_p50_ms: float
    python_p50_ms: float

    @property
    def rps_ratio(self) -> float:
        return self.python_rps / self.wrk_rps if self.wrk_rps else float("nan")


@dataclass
class Calibration:
    started: str  # the run that measured it
    cpu_model: str
    cores: int
    wrk: str
    pairs: list[Pair]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> "Calibration | None":
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["started"], data["cpu_model"], data["cores"], data["wrk"],
                   [Pair(**pair) for pair in data["pairs"]])


def calibration_of(run: Run) -> Calibration | None:
    """The floor pairs of this run, or None when it did not measure the floor with both generators."""
    pairs = []
    for concurrency in sorted({m.concurrency for m in run.measurements if m.setup == FLOOR}):
        wrk = run.find(FLOOR, concurrency=concurrency, generator="wrk")
        python = run.find(FLOOR, concurrency=concurrency, generator="python")
        if wrk is not None and python is not None:
            pairs.append(Pair(concurrency, wrk.latencies.rps, python.latencies.rps, wrk.latencies.p50_ms,
                              python.latencies.p50_ms))
    if not pairs:
        return None
    return Calibration(run.started, run.machine.cpu_model, run.machine.cores, run.machine.wrk, pairs)
