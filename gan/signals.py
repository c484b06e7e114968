"""Stopping cleanly on SIGINT / SIGTERM: the loop polls a flag and saves a whole state first."""
from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def catch_stop_signals():
    """Within the block, SIGINT and SIGTERM only record their name in the yielded dict (the loop
    polls it and stops cleanly); a second one raises KeyboardInterrupt. The old handlers come
    back on exit."""
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def leave_stop_signals_to_parent(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGTERM. A terminal's Ctrl-C and a scheduler's SIGTERM
    reach the whole process group; a worker killed by one makes the loader raise before the
    training process has written its final state. That process stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
