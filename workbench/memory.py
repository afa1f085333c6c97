"""The memory budget every user-controlled size runs under (sweep grids, samples, ranges, beams, batches).

Work that scales with a number the user picks is done in batches sized from :func:`memory_budget`, or
refused up front by :func:`require_within_budget` with the estimate and the limit, never left to grow
until the kernel kills the process.
"""

from __future__ import annotations

import os

import torch

from workbench.errors import BudgetError

CPU_CAP = 2 << 30  # bytes one batch may take on the CPU, whatever the machine has free


def available_ram() -> int:
    """Bytes the kernel says are available (``MemAvailable``), or 8 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info.get("MemAvailable", 8 << 30)
    except (OSError, ValueError, IndexError):
        return 8 << 30


def memory_budget(device: torch.device | str = "cpu") -> int:
    """Bytes one batch may use: half the free GPU memory, or a quarter of the available RAM (≤ 2 GiB).

    ``WORKBENCH_MEMORY_BUDGET`` (bytes, or with a K/M/G suffix) overrides it, e.g. for tests.
    """
    if env := os.environ.get("WORKBENCH_MEMORY_BUDGET"):
        return parse_bytes(env)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(min(available_ram() // 4, CPU_CAP))


def parse_bytes(text: str) -> int:
    """``"512M"`` → 536870912; plain digits are bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(float(raw))
    except ValueError:
        raise BudgetError(f"Memory budget {text!r} is not a size: write bytes or e.g. 512M, 2G.") from None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def require_within_budget(nbytes: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse, before any work, a task whose smallest unit would not fit the budget."""
    budget = memory_budget(device)
    if nbytes > budget:
        raise BudgetError(
            f"{what} needs about {format_bytes(nbytes)}, more than the memory budget of {format_bytes(budget)}: {fix}."
        )


def rows_per_batch(bytes_per_row: int, device: torch.device | str = "cpu", cap: int | None = None) -> int:
    """How many rows of ``bytes_per_row`` one batch may hold (at least 1; at most ``cap``)."""
    rows = max(1, memory_budget(device) // max(1, int(bytes_per_row)))
    return min(rows, cap) if cap else rows
