"""Benchmarks that print images/s side by side (`alexkit bench ...`); timings never live in tests."""


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process (all threads), of its child processes that have
    ended and been reaped, and of its live ones (DataLoader workers; read from /proc). A pipeline's
    CPU time is the difference of two readings."""
    import multiprocessing
    import os
    import resource

    ticks = 0
    for child in multiprocessing.active_children():  # reaps the ended ones: they count below
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    me, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ended.ru_utime + ended.ru_stime + ticks / os.sysconf("SC_CLK_TCK")
