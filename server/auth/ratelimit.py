"""Sign-in rate limiting: at most N failures per user name and per client address in a window.

In memory, per server process: a restart forgets failures, which costs an attacker a server
restart per N guesses. Old entries are dropped as they age, and the table is bounded.
"""

import time
from collections import deque
from collections.abc import Callable

from shared.errors import RateLimited

_MAX_KEYS = 100_000  # beyond this, the stalest keys are forgotten first


class SignInLimiter:
    def __init__(self, max_failures: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _keys(self, user: str, remote: str) -> tuple[str, str]:
        return f"user:{user}", f"addr:{remote}"

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def check(self, user: str, remote: str) -> None:
        """Raise RateLimited if the user or the address has too many recent failures."""
        now = self._clock()
        for key in self._keys(user, remote):
            times = self._recent(key, now)
            if times is not None and len(times) >= self._max:
                wait = max(1.0, times[0] + self._window - now)
                raise RateLimited(
                    f"too many failed sign-ins; try again in {int(wait + 0.999)} s", wait)

    def begin(self, user: str, remote: str) -> float:
        """Check, then count this attempt as a failure until `succeeded` says otherwise, so
        attempts made in parallel are counted before their (slow) password checks finish.
        Returns the attempt's mark for `succeeded`."""
        self.check(user, remote)
        return self.failed(user, remote)

    def failed(self, user: str, remote: str) -> float:
        now = self._clock()
        for key in self._keys(user, remote):
            self._failures.setdefault(key, deque()).append(now)
            self._failures[key] = self._failures.pop(key)  # most recently failed last
        while len(self._failures) > _MAX_KEYS:
            del self._failures[next(iter(self._failures))]
        return now

    def succeeded(self, user: str, remote: str | None = None, mark: float | None = None) -> None:
        """A correct password clears the user's failures, and takes back the address's
        count of this attempt (`mark` from `begin`), never its earlier failures."""
        self._failures.pop(f"user:{user}", None)
        times = self._failures.get(f"addr:{remote}") if remote is not None else None
        if times is not None and mark is not None:
            try:
                times.remove(mark)
            except ValueError:
                pass  # aged out meanwhile
            if not times:
                del self._failures[f"addr:{remote}"]
