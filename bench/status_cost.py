"""What the "before / after message status and suppression" measurement needs besides the plan: the old tree and
Redis's own counts.

The tree before the status records (BEFORE_COMMIT, the last commit before
e243339) is extracted once with `git archive` under var/bench/ and reused;
herald-smtp runs from it with that tree first on PYTHONPATH (the venv has the
current tree installed editable, and an editable finder comes after the path
entries). When git or the commit is missing, `old_tree` says why and the run
goes on without it.

Redis counts come from one `INFO all` before and one after a measurement:
`total_reads_processed` is the round trips (redis-py sends one command per
read unless it pipelines), commandstats the calls by command (the commands a
Lua script runs are counted under their own names too), used_cpu_* Redis's
own CPU time.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BEFORE_COMMIT = "d7d430c"
BEFORE_25_COMMIT = "c2011bb"  # the tree before issue #25's first change: the feature-set section's "before"
_MARKER = ".bench-commit"  # the full hash the extracted tree came from; written last, so a half copy is redone


@dataclass(frozen=True)
class OldTree:
    """The old tree on disk (`path`), or why it is not there (`missing`)."""

    commit: str
    path: Path | None = None
    missing: str = ""


def old_tree(repo: Path, into: Path, commit: str = BEFORE_COMMIT) -> OldTree:
    """`commit`'s files under `into`, extracted once and reused; OldTree.missing says why not."""
    if shutil.which("git") is None:
        return OldTree(commit, missing="git is not on PATH")
    found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        return OldTree(commit, missing=f"commit {commit} is not in this checkout's history (a tarball, or a shallow "
                                       "clone?)")
    full = found.stdout.strip()
    marker = into / _MARKER
    if marker.is_file() and marker.read_text(encoding="ascii").strip() == full:
        return OldTree(commit, into)
    if into.exists():  # stale: another commit or a copy that was interrupted
        shutil.rmtree(into)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", full], capture_output=True)
    if archive.returncode != 0:
        return OldTree(commit, missing=f"git archive {commit} failed: {archive.stderr.decode(errors='replace')}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    marker.write_text(full + "\n", encoding="ascii")
    return OldTree(commit, into)


def imported_from(env: dict[str, str], cwd: Path) -> Path | None:
    """Where `import herald_smtp` finds the package in a child with `env` (the old tree's, if PYTHONPATH works);
    None when the import fails."""
    probe = subprocess.run([sys.executable, "-c", "import herald_smtp; print(herald_smtp.__file__)"], env=env,
                           cwd=cwd, capture_output=True, text=True)
    return Path(probe.stdout.strip()).resolve().parent if probe.returncode == 0 else None


@dataclass(frozen=True)
class RedisCounts:
    """Redis's counters at one moment (from INFO all, as redis-py parses it)."""

    reads: int  # total_reads_processed: one per request a client sent, unless it pipelined
    cpu_seconds: float  # used_cpu_user + used_cpu_sys
    calls: dict[str, int] = field(default_factory=dict)  # per command name, lower case

    @classmethod
    def from_info(cls, info: dict) -> "RedisCounts":
        calls = {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()
                 if name.startswith("cmdstat_")}
        return cls(int(info["total_reads_processed"]), float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                   calls)


# The scripts' own commands (GET, SET, ...) are counted in commandstats too: only these are requests of a client.
SCRIPT_CALLS = ("evalsha", "eval", "script")


def redis_delta(before: RedisCounts, after: RedisCounts) -> dict:
    """What happened between two snapshots, less the snapshots themselves: `after`'s INFO is one read of the
    delta (a read is counted before its command runs), `before`'s INFO one call (a call after it ran)."""
    calls = {name: after.calls.get(name, 0) - before.calls.get(name, 0) for name in after.calls}
    calls["info"] = calls.get("info", 0) - 1
    return {"round_trips": after.reads - before.reads - 1,
            "cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 6),
            "calls": {name: count for name, count in sorted(calls.items()) if count}}


def per_request(total: float | None, requests: int) -> float | None:
    return None if total is None or not requests else total / requests
