"""Was the machine quiet? Load averages before and after a benchmark, and the CPU time other processes took.

This project's machine is shared, so every comparison bench prints this line with its table.
"Others" is the machine's busy CPU time during the run minus the CPU time of this process and its
waited-for children (the systems measured, Ray's daemons and workers included): it approximates
what processes outside the benchmark took from the cores.
"""

import os
import resource
import time

import psutil


def _busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_s() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class MachineLoad:
    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self.start, self.busy, self.own = time.perf_counter(), _busy_s(), _own_s()

    def report(self) -> str:
        wall = time.perf_counter() - self.start
        busy, own = _busy_s() - self.busy, _own_s() - self.own
        others = max(0.0, busy - own)
        cores = os.cpu_count()
        return (f"machine: {cores} cores; load average (1/5/15 min) before {_fmt(self.load_before)}, after "
                f"{_fmt(os.getloadavg())}; over the {wall:.0f} s run the bench used {own:.0f} CPU-s and other "
                f"processes ~{others:.0f} CPU-s ({others / (wall * cores):.0%} of the machine)")


def _fmt(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)
