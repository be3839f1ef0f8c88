"""The acceptance ledger: which upload versions were taken in, hour by hour.

Each claim appends one line to the append blob of its hour in the system account
(``intake-ledger/accepted/YYYY/MM/DD/HH.jsonl``, the hour of the copy's Last-Modified, UTC):
the name, the copy's etag, the snapshot the run reads, the inbox etag and the settings it was
taken in with. The sweep and backfills read the hours of their window by name and never list
``accepted``, so what a sweep costs grows with the uploads of its window, not with history
(bench/sweep.py). A retried claim may write a line twice: readers keep the first of each
version. Housekeeping prunes what is older than the retention (``prune``): the snapshots and,
where nothing newer was taken in since, the accepted blob; then the hour's line file itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PREFIX = "accepted/"


@dataclass(frozen=True)
class Entry:
    name: str
    etag: str  # of the copy in accepted (the version the snapshot holds)
    snapshot: str
    upload_etag: str  # of the upload in the inbox: the watcher's run id is made from it
    at: datetime  # when the copy was made (the service's clock)
    settings: dict
    settings_from: dict

    def line(self) -> str:
        return json.dumps({"name": self.name, "etag": self.etag, "snapshot": self.snapshot,
                           "upload_etag": self.upload_etag, "at": self.at.isoformat(),
                           "settings": self.settings, "settings_from": self.settings_from}) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Entry:
        fields = json.loads(line)
        return cls(**(fields | {"at": datetime.fromisoformat(fields["at"])}))


def hour_blob(moment: datetime) -> str:
    return PREFIX + moment.astimezone(UTC).strftime("%Y/%m/%d/%H") + ".jsonl"


def hours(start: datetime, end: datetime) -> list[str]:
    """The line files that can hold entries of [start, end)."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    names = []
    while hour < end:
        names.append(hour_blob(hour))
        hour += timedelta(hours=1)
    return names


def record(system, entry: Entry) -> None:
    """Append ``entry`` to its hour's line file (``system``: the system account's BlobStore)."""
    from storage.blobs import LEDGER

    system.append_text(LEDGER, hour_blob(entry.at), entry.line())


def entries(system, start: datetime, end: datetime) -> list[Entry]:
    """The versions taken in during [start, end), each once, in the order they were taken in."""
    from storage.blobs import LEDGER

    seen, found = set(), []
    for name in hours(start, end):
        for line in (system.read_text(LEDGER, name) or "").splitlines():
            entry = Entry.from_line(line)
            if start <= entry.at < end and (entry.name, entry.etag) not in seen:
                seen.add((entry.name, entry.etag))
                found.append(entry)
    return found


def prune(data, system, older_than: datetime) -> dict:
    """Remove what was taken in before ``older_than`` (a whole hour at a time): each entry's
    snapshot, and its accepted blob where that is still the version of the entry (nothing
    newer was taken in under the name since), then the hour's line file. Returns the counts."""
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from storage.blobs import ACCEPTED, LEDGER

    cutoff = hour_blob(older_than)
    removed = {"hours": 0, "snapshots": 0, "blobs": 0}
    for blob in system.list(LEDGER, PREFIX):
        if blob.name >= cutoff:
            continue  # names sort by time: this hour is not over the age yet
        for line in (system.read_text(LEDGER, blob.name) or "").splitlines():
            entry = Entry.from_line(line)
            accepted = data.client.get_blob_client(ACCEPTED, entry.name)
            try:
                accepted.delete_blob(delete_snapshots="include", etag=entry.etag, match_condition=_unchanged())
                removed["blobs"] += 1
                continue
            except (ResourceModifiedError, ResourceNotFoundError):
                pass  # taken in again since (that version stays), or gone already
            try:
                data.client.get_blob_client(ACCEPTED, entry.name, snapshot=entry.snapshot).delete_blob()
                removed["snapshots"] += 1
            except ResourceNotFoundError:
                pass
        system.delete(LEDGER, blob.name)
        removed["hours"] += 1
    return removed


def _unchanged():
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified
