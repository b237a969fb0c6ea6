"""docs/benchmarks.png from a Run: p50 (solid) and p95 (dashed) latency by setup and concurrency, one panel per RTT.

matplotlib with the Agg backend (no display needed), from the `bench` extra.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .report import http_generator  # noqa: E402
from .results import (CEILING, CONNECT_PER_MESSAGE, DOT_APART, DOT_APART_NODELAY, FLOOR, HERALD, REPLAY,  # noqa: E402
                      TRACED, WARM, Run)

# (setup, server PIPELINING or None for any, legend, colour)
SERIES = [
    (HERALD, True, "herald-smtp, PIPELINING server", "tab:blue"),
    (HERALD, False, "herald-smtp, no PIPELINING", "tab:orange"),
    (TRACED, True, "herald-smtp, tracing on", "black"),
    (CEILING, None, "ceiling (raw smtplib, conn/thread)", "tab:green"),
    (REPLAY, None, "replay", "tab:purple"),
    (FLOOR, None, "HTTP floor (no SMTP)", "tab:gray"),
    (WARM, None, "warm connection (smtplib)", "tab:olive"),
    (DOT_APART, None, "dot written apart (smtplib)", "tab:brown"),
    (DOT_APART_NODELAY, None, "dot apart + TCP_NODELAY (smtplib)", "tab:cyan"),
    (CONNECT_PER_MESSAGE, None, "connect-per-message (smtplib)", "tab:red"),
]


def _series(run: Run, setup: str, pipelining, rtt_ms: float, generator: str):
    points = []
    for m in run.measurements:
        if m.setup != setup or (pipelining is not None and m.pipelining != pipelining):
            continue
        if m.rtt_ms is not None and m.rtt_ms != rtt_ms:
            continue
        if m.setup == FLOOR and m.generator != generator:
            continue
        points.append(m)
    points.sort(key=lambda m: m.concurrency)
    return points


def plot(run: Run, path: Path) -> None:
    rtts = sorted({m.rtt_ms for m in run.measurements if m.rtt_ms is not None})
    generator = http_generator(run)
    figure, axes = plt.subplots(1, len(rtts), figsize=(6.5 * len(rtts), 5.2), sharey=True, squeeze=False)
    for axis, rtt_ms in zip(axes[0], rtts, strict=True):
        for setup, pipelining, legend, colour in SERIES:
            points = _series(run, setup, pipelining, rtt_ms, generator)
            if not points:
                continue
            xs = [m.concurrency for m in points]
            marker = "o" if len(points) > 1 else "D"
            axis.plot(xs, [m.latencies.p50_ms for m in points], marker=marker, color=colour, label=f"{legend} p50")
            axis.plot(xs, [m.latencies.p95_ms for m in points], marker=marker, color=colour, linestyle="--",
                      alpha=0.7, label=f"{legend} p95")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks([1, 4, 16], labels=["1", "4", "16"])
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_title(f"SMTP round trip {rtt_ms:g} ms")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("latency, ms (log)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for axis in axes[0][1:]:
        more_handles, more_labels = axis.get_legend_handles_labels()
        for handle, label in zip(more_handles, more_labels, strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(f"herald-smtp latency, p50 solid, p95 dashed ({run.machine.cores} cores, HTTP by {generator})")
    figure.tight_layout(rect=(0, 0.2, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
