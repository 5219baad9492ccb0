"""Per-user quota accounting that counts uploads in flight, not only what is stored.

`used` comes from the database (sum of the user's vaults) when an upload begins; uploads in
progress hold reservations here, so two parallel 60 MiB uploads cannot both squeeze under a
quota with 100 MiB left. Uploads that finish while another streams are added to that one's
`used` too (the ledger's `settled` counter), so parallel uploads never under-count. In
memory, per process: one server owns its data folder.
"""

import logging
from dataclasses import dataclass, field

from shared.errors import QuotaExceeded

logger = logging.getLogger(__name__)


def format_size(n: int) -> str:
    """A size for messages: MiB below a GiB, GiB up to a TiB, then TiB."""
    if n >= 1 << 40:
        return f"{n / (1 << 40):.1f} TiB"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


class QuotaLedger:
    """Bytes reserved by uploads in progress, per user id."""

    def __init__(self) -> None:
        self._reserved: dict[int, int] = {}
        self._settled: dict[int, int] = {}  # bytes stored by finished uploads, ever

    def reserved(self, user_id: int) -> int:
        return self._reserved.get(user_id, 0)

    def settled(self, user_id: int) -> int:
        return self._settled.get(user_id, 0)

    def open(self, user_id: int, quota: int | None, used: int) -> "Reservation":
        """A reservation (initially 0 bytes) for one upload of `user_id`, given the bytes the
        user had stored when it began; `commit` or `release` it when the upload ends.
        `quota` None means unlimited."""
        return Reservation(self, user_id, quota, used, self.settled(user_id))

    def _add(self, user_id: int, delta: int) -> None:
        total = self._reserved.get(user_id, 0) + delta
        if total > 0:
            self._reserved[user_id] = total
        else:
            self._reserved.pop(user_id, None)


@dataclass
class Reservation:
    """One upload's share of its user's quota; `grow` before accepting more bytes."""

    ledger: QuotaLedger
    user_id: int
    quota: int | None
    used_at_start: int  # bytes stored when the upload began
    settled_at_start: int  # the ledger's settled bytes then
    size: int = field(default=0)

    @property
    def used(self) -> int:
        """Bytes stored now: at the start, plus what other uploads stored since."""
        return self.used_at_start + self.ledger.settled(self.user_id) - self.settled_at_start

    def grow(self, incoming: int) -> None:
        """Reserve `incoming` more bytes, or raise QuotaExceeded naming the sizes involved."""
        if self.quota is not None:
            others = self.ledger.reserved(self.user_id) - self.size
            if self.used + others + self.size + incoming > self.quota:
                in_flight = f", {format_size(others)} in other uploads" if others else ""
                raise QuotaExceeded(
                    f"quota of {format_size(self.quota)} exceeded: {format_size(self.used)} "
                    f"used{in_flight}, this upload needs {format_size(self.size + incoming)}")
        self.size += incoming
        self.ledger._add(self.user_id, incoming)

    def commit(self) -> None:
        """The upload is stored (and in the database): its bytes move from reserved to used."""
        self.ledger._settled[self.user_id] = self.ledger.settled(self.user_id) + self.size
        self.release()

    def release(self) -> None:
        """Give the reserved bytes back (idempotent)."""
        self.ledger._add(self.user_id, -self.size)
        self.size = 0
