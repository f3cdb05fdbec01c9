"""Last contact of the stores, kept in memory and written with the group writer's next batch.

An agent's poll (and a heartbeat that changes nothing but the time) says only "this store was here at
that time": worth remembering, not worth a commit each. The ``ContactBook`` keeps the newest contact per
store and every ``[writes] contact_flush_seconds`` the writer drains it into the transaction of its next
batch (or writes it on its own when none comes). A crash loses at most that long of contact times, never
a report.
"""

from __future__ import annotations

import threading
from datetime import datetime

from server.fleet.repository import FleetRepository

# store id -> (last contact, the newest sent_at of an unchanged heartbeat, if any)
Contacts = dict[str, tuple[datetime, datetime | None]]


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class ContactBook:
    """The newest contact per store since the last flush (a ``server.writer.Flush``)."""

    def __init__(self, repo: FleetRepository) -> None:
        self.repo = repo
        self._held: Contacts = {}
        self._lock = threading.Lock()

    def note(self, store_id: str, at: datetime, sent_at: datetime | None = None) -> None:
        """Remember that ``store_id`` was in contact at ``at`` (an unchanged heartbeat: sent ``sent_at``)."""
        with self._lock:
            self._merge(store_id, at, sent_at)

    def _merge(self, store_id: str, at: datetime, sent_at: datetime | None) -> None:
        old = self._held.get(store_id)
        if old is None:
            self._held[store_id] = (at, sent_at)
        else:
            self._held[store_id] = (max(old[0], at), _later(old[1], sent_at))

    def drain(self) -> Contacts | None:
        with self._lock:
            held, self._held = self._held, {}
        return held or None

    def write(self, held: Contacts) -> None:
        self.repo.touch_agents([(store_id, at, sent_at) for store_id, (at, sent_at) in held.items()])

    def restore(self, held: Contacts) -> None:
        with self._lock:
            for store_id, (at, sent_at) in held.items():
                self._merge(store_id, at, sent_at)
