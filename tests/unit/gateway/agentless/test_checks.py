"""gateway.agentless.checks: password checks on their own bounded executor."""

import asyncio
import threading

from gateway.agentless.checks import PasswordChecks


def test_checks_run_on_their_own_workers_and_refuse_when_the_queue_is_full():
    release = threading.Event()
    checks = PasswordChecks(workers=2, queue=3)

    def slow(form):
        release.wait(5)
        return form == "right"

    async def go():
        futs = [checks.submit(slow, "right" if i == 0 else "wrong") for i in range(5)]
        assert all(f is not None for f in futs) and checks.outstanding == 5
        assert checks.submit(slow, "x") is None  # 2 running + 3 waiting: full
        # The loop's default executor (private DNS lookups) is not held up by the scrypt runs.
        assert await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, lambda: 42), 2) == 42
        release.set()
        got = await asyncio.gather(*futs)
        await asyncio.sleep(0)
        return got

    try:
        assert asyncio.run(go()) == [True, False, False, False, False]
        assert checks.outstanding == 0
    finally:
        release.set()
        checks.close()
