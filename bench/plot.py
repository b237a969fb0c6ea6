"""docs/benchmarks.png from a Run: p50 (solid) and p95 (dashed) latency by setup and concurrency, one panel per RTT;
then, when the run has the feature-set section, its CPU ms per request by variant with issue #25's target line.

matplotlib with the Agg backend (no display needed), from the `bench` extra.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .report import CPU_TARGET, FeatureBars, feature_bars, http_generator  # noqa: E402
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


def _latency_rtts(run: Run) -> list[float]:
    """The round trips with a latency series to draw (the feature-set section's rows have their own panel)."""
    setups = {setup for setup, *_ in SERIES}
    return sorted({m.rtt_ms for m in run.measurements if m.rtt_ms is not None and m.setup in setups})


def _feature_panel(axis, bars: FeatureBars) -> None:
    labels = [label for label, _ in bars.values]
    values = [value for _, value in bars.values]
    colours = ["tab:gray" if label == "HTTP floor" else "tab:blue" for label in labels]
    axis.bar(range(len(values)), values, color=colours)
    for x, value in enumerate(values):
        axis.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=8)
    if bars.target_ms is not None:
        axis.axhline(bars.target_ms, color="tab:red", linestyle="--",
                     label=f"target: {CPU_TARGET:g}x the floor's CPU ({bars.target_ms:.2f} ms)")
        axis.legend(loc="upper left", fontsize=8, frameon=False)
    axis.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("CPU ms per request (gunicorn master + workers)")
    axis.set_title("CPU per send by feature set, 0 ms, c=16")
    axis.grid(True, axis="y", alpha=0.3)


def plot(run: Run, path: Path) -> None:
    rtts = _latency_rtts(run)
    bars = feature_bars(run)
    generator = http_generator(run)
    panels = max(1, len(rtts) + (1 if bars else 0))
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.2), squeeze=False)
    latency_axes = list(axes[0][:len(rtts)])
    for axis in latency_axes[1:]:
        axis.sharey(latency_axes[0])
    if bars:
        _feature_panel(axes[0][len(rtts)], bars)
    for axis, rtt_ms in zip(latency_axes, rtts, strict=True):
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
    if latency_axes:
        latency_axes[0].set_ylabel("latency, ms (log)")
    handles, labels = latency_axes[0].get_legend_handles_labels() if latency_axes else ([], [])
    for axis in latency_axes[1:]:
        more_handles, more_labels = axis.get_legend_handles_labels()
        for handle, label in zip(more_handles, more_labels, strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    what = "latency, p50 solid, p95 dashed" if latency_axes else "CPU per send"
    if latency_axes and bars:
        what += "; CPU per send by feature set"
    figure.suptitle(f"herald-smtp {what} ({run.machine.cores} cores, HTTP by {generator})")
    figure.tight_layout(rect=(0, 0.2 if handles else 0, 1, 0.95))  # the bottom holds the latency legend
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
