"""The worker pool that export and evaluate share: tasks in order, in this process or in forked workers.

A task function is a module-level function of one task that reads what it needs from `WORKER`, the
per-process state: set once per worker (forked, so a DatasetDict or an open memory map is inherited,
not pickled), or in this process for --num-proc 1, and cleared afterwards so that no memory map
outlives the command.
"""

import multiprocessing
import os
import signal

WORKER = {}


def _init_worker(state):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must end workers quietly
    WORKER.update(state)


def opened(key, opener):
    """WORKER[key], made by opener() on first use in this process: files are opened where they are read."""
    if key not in WORKER:
        WORKER[key] = opener()
    return WORKER[key]


def run_tasks(function, tasks, num_proc, state):
    """function(task) of each task, in task order, from this process or a pool of num_proc workers."""
    if num_proc <= 1:
        WORKER.update(state)
        try:
            yield from map(function, tasks)
        finally:
            WORKER.clear()
        return
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(num_proc, _init_worker, (state,)) as pool:
        yield from pool.imap(function, tasks)
