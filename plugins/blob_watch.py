"""Noticing uploads: a deferrable sensor that fires on *new blob versions*, not on any blob.

The provider's ``WasbPrefixSensor`` answers "is there any blob under this prefix?". Uploads
are never deleted from ``videos-in``, so that question is always "yes" after the first one;
a watcher built on it would spin. This sensor asks the question the product needs: "is
there a blob version I have not seen?", with the same shape (an async trigger polling with
``WasbAsyncHook`` in the triggerer, so waiting costs no worker slot).

What was seen is a watermark: the newest ``last_modified`` handled so far, plus the versions
(name, etag) at exactly that instant. Each version maps to one processing run id, so even
if the watermark is lost or two watchers race, a version is processed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

STATE_VARIABLE = "blob_watcher_state"


def processing_run_id(container: str, name: str, etag: str) -> str:
    """One run id per blob version: readable prefix, exact identity in the hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    digest = hashlib.sha256(f"{container}/{name}@{etag}".encode()).hexdigest()[:16]
    return f"upload__{slug}__{digest}"


def new_versions(blobs: list[dict], state: dict | None) -> list[dict]:
    """Blobs (dicts with name, etag, last_modified) newer than the watermark in ``state``."""
    if not state:
        return sorted(blobs, key=lambda b: (b["last_modified"], b["name"]))
    since, seen = state["since"], {tuple(v) for v in state.get("seen", [])}
    fresh = [b for b in blobs if b["last_modified"] > since
             or (b["last_modified"] == since and (b["name"], b["etag"]) not in seen)]
    return sorted(fresh, key=lambda b: (b["last_modified"], b["name"]))


def advance(state: dict | None, handled: list[dict]) -> dict | None:
    """The watermark after ``handled`` versions were turned into runs."""
    if not handled:
        return state
    newest = max(b["last_modified"] for b in handled)
    seen = {(b["name"], b["etag"]) for b in handled if b["last_modified"] == newest}
    if state and state["since"] == newest:
        seen |= {tuple(v) for v in state.get("seen", [])}
    if state and state["since"] > newest:
        return state
    return {"since": newest, "seen": sorted(list(v) for v in seen)}


async def list_versions(client, container: str, prefix: str) -> list[dict]:
    container_client = client.get_container_client(container)
    return [{"name": b.name, "etag": str(b.etag).strip('"'), "last_modified": b.last_modified.isoformat(),
             "size": b.size}
            async for b in container_client.list_blobs(name_starts_with=prefix or None)
            if b.size and not b.name.endswith("/")]


class NewBlobVersionTrigger(BaseTrigger):
    """Polls a container and yields one event listing the blob versions past the watermark."""

    def __init__(self, container: str, wasb_conn_id: str, state: dict | None, prefix: str = "",
                 poke_interval: float = 5.0, give_up_after: float = 3600.0):
        super().__init__()
        self.container, self.wasb_conn_id, self.state = container, wasb_conn_id, state
        self.prefix, self.poke_interval, self.give_up_after = prefix, poke_interval, give_up_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("blob_watch.NewBlobVersionTrigger", {
            "container": self.container, "wasb_conn_id": self.wasb_conn_id, "state": self.state,
            "prefix": self.prefix, "poke_interval": self.poke_interval, "give_up_after": self.give_up_after})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbAsyncHook

        hook = WasbAsyncHook(wasb_conn_id=self.wasb_conn_id)
        deadline = asyncio.get_running_loop().time() + self.give_up_after
        polls = 0
        async with await hook.get_async_conn() as client:  # one client for all polls (the hook caches it)
            while True:
                polls += 1
                try:
                    fresh = new_versions(await list_versions(client, self.container, self.prefix), self.state)
                except Exception as exc:  # noqa: BLE001 - storage hiccups: keep waiting, say so
                    self.log.warning("listing %s failed (%s); trying again", self.container, exc)
                    fresh = []
                if fresh:
                    yield TriggerEvent({"status": "success", "blobs": fresh, "polls": polls})
                    return
                if asyncio.get_running_loop().time() >= deadline:
                    yield TriggerEvent({"status": "idle", "blobs": [], "polls": polls})
                    return
                await asyncio.sleep(self.poke_interval)


class NewBlobVersionSensor(BaseSensorOperator):
    """Waits, deferred, for a new blob version in ``container``; returns the new versions."""

    def __init__(self, *, container: str, wasb_conn_id: str, prefix: str = "", poke_interval: float = 5.0,
                 **kwargs):
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.container, self.wasb_conn_id, self.prefix = container, wasb_conn_id, prefix

    def execute(self, context) -> list[dict]:
        from airflow.sdk import Variable

        state = Variable.get(STATE_VARIABLE, default=None, deserialize_json=True)
        self.defer(trigger=NewBlobVersionTrigger(self.container, self.wasb_conn_id, state, self.prefix,
                                                 self.poke_interval, give_up_after=self.timeout),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        self.log.info("%d new blob version(s) after %d poll(s)", len(event["blobs"]), event["polls"])
        if event["status"] == "idle":  # nothing new for a while: end this run, the next one waits on
            raise AirflowSkipException(f"no new upload in {self.timeout:.0f} s ({event['polls']} polls)")
        return event["blobs"]
