"""What a running command's exit status depends on besides its errors: the outputs it has put in place, and a
stop that SIGINT or SIGTERM asked for. The CLI records both; the writers read them. Library use (no CLI) never
asks for a stop, so nothing here changes what it does.

A signal that arrives during an import cannot stop the command at once (an exception raised there leaves a
half-made module behind), so the stop is recorded and delivered later. Whenever it comes, no output may be put in
place after it was asked for: `refuse_commit_if_stopping` holds that line at every rename and before a checkpoint
goes to standard output. Both belong to the main thread, where the CLI runs its commands and Python runs signal
handlers: a program's other threads that write with rnninit meanwhile neither count nor stop.
"""

from __future__ import annotations

import threading


class CommitLog:
    """How many outputs the main thread has put in place. A signal that arrives after its command's output is in
    place comes too late to stop anything: the command succeeded."""

    count = 0

    @classmethod
    def record(cls) -> None:
        """One more output in place (counted on the main thread only)."""
        if threading.current_thread() is threading.main_thread():
            cls.count += 1


class Stop:
    """The signal that asked the running command to stop (None: none did; the first one counts), and whether the
    KeyboardInterrupt for it is already on its way out (then a second signal must not cut the cleanup short)."""

    signum: int | None = None
    unwinding = False


def reset_stop() -> None:
    """A new command starts, or the last one has ended: no stop asked for."""
    Stop.signum, Stop.unwinding = None, False


def refuse_commit_if_stopping() -> None:
    """Raise KeyboardInterrupt if a stop was asked for and the output is not yet in place (call with the signals
    held, right before a rename): a stop that is still on its way, or one whose KeyboardInterrupt something
    swallowed, must not let the output land."""
    if Stop.signum is not None and threading.current_thread() is threading.main_thread():
        Stop.unwinding = True
        raise KeyboardInterrupt
