"""Password checks off the event loop, on workers of their own with a bounded queue.

scrypt costs ~50 ms of CPU and 16 MiB per run.  On the loop's default executor
it shared the threads that resolve apps with the private DNS server, so a
burst of unauthenticated sign-in POSTs delayed agents' leases.  Here at most
``workers`` checks run and ``queue`` wait; past that :meth:`submit` says no,
and the shell answers 503 with Retry-After instead of queueing without end.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class PasswordChecks:
    """A small executor for blocking password checks (see the module docstring)."""

    def __init__(self, *, workers: int = 2, queue: int = 16):
        self.limit = workers + queue
        self.outstanding = 0  # running and waiting
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ztna-password")

    def submit(self, fn, *args) -> asyncio.Future | None:
        """An awaitable for ``fn(*args)`` run on a worker; None when the queue is full."""
        if self.outstanding >= self.limit:
            return None
        self.outstanding += 1
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _fut) -> None:
        self.outstanding -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
