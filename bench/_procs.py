"""Peak memory of a process tree, read from /proc (Linux): which process, and its high-water RSS."""

from __future__ import annotations

import os
from pathlib import Path


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = list(parents.get(pid, []))
    while stack:
        child = stack.pop(0)
        found.append(child)
        stack.extend(parents.get(child, []))
    return found


def label(pid: int) -> str:
    """A short name: the ``peek`` sub-command and its analyzers, or the program name."""
    try:
        args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [arg.decode(errors="replace") for arg in args if arg]
    if "infra.cli" in words:
        rest = words[words.index("infra.cli") + 1 :]
        return " ".join(word for word in rest[:3] if not word.startswith("--")) or "peek"
    if any("multiprocessing" in word for word in words):
        # Spawned children: uvicorn's worker processes under `peek api`, the analysis pool under
        # a worker; multiprocessing's resource tracker under either.
        if any("resource_tracker" in word for word in words):
            return "resource tracker"
        parent = _parent_of(pid)
        return "api process" if parent and label(parent).startswith("api") else "analyzer pool process"
    return Path(words[0]).name if words else f"pid {pid}"


def _parent_of(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MB; 0 when it is gone."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far; 0 when it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Label and CPU seconds of ``pid`` and every descendant."""
    return {each: (label(each), cpu_seconds(each)) for each in [pid, *children_of(pid)]}


def tree_peaks(pid: int) -> dict[int, tuple[str, float]]:
    """Label and peak RSS of ``pid`` and every descendant."""
    return {each: (label(each), peak_rss_mb(each)) for each in [pid, *children_of(pid)]}
