"""What a gunicorn master and its workers use, from /proc: each worker's peak RSS (VmHWM), and CPU time."""

from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (gunicorn's workers are the master's children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command name (field 2) is in parentheses and may hold spaces: split after it.
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        if fields and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak RSS) in MB of one process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_peak_rss_mb(master_pid: int) -> float | None:
    """The largest peak RSS among the master's workers, in MB; None when there are none."""
    peaks = [peak for peak in map(peak_rss_mb, children(master_pid)) if peak is not None]
    return max(peaks) if peaks else None


def cpu_seconds(master_pid: int) -> float:
    """User + system CPU time so far of the master and its workers."""
    total = 0.0
    for pid in [master_pid, *children(master_pid)]:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)
    return total
