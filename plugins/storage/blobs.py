"""Blob storage as the pipeline uses it: two accounts, fixed containers, folder sync, publishing.

The **data** account is what users touch: ``videos-in`` (the inbox: uploads not yet taken
in), ``accepted`` (uploads taken in, each processing run reading its own snapshot, never
modified), ``videos-out`` (results), ``quarantine`` (rejected uploads with a reason), ``styles``
(users' style models and style pictures). The **system** account holds ``logs``, the
acceptance ledger (``intake-ledger``: which upload versions were taken in, hour by hour) and
each run's intermediate work in two containers of the run's own (``run_containers``). Both are
reached through Airflow connections, so Azurite and real Azure differ only in the connection
string.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DATA_CONN = "wasb_data"
SYSTEM_CONN = "wasb_system"
INPUTS, ACCEPTED, OUTPUTS, QUARANTINE, STYLES = "videos-in", "accepted", "videos-out", "quarantine", "styles"
LOGS, LEDGER = "logs", "intake-ledger"
DATA_CONTAINERS = (INPUTS, ACCEPTED, OUTPUTS, QUARANTINE, STYLES)
SYSTEM_CONTAINERS = (LOGS, LEDGER)

# The SDK logs every request's headers at INFO: noise in task logs, and nothing we need.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


def run_containers(run_id: str) -> tuple[str, str]:
    """The system-account containers of one run: what scoring reads (segments, audio, plan,
    model) and what it writes (styled segments). A container is the narrowest scope a SAS
    has on blob storage, so a token for one of them reaches one run's data, one way."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:24]
    return f"run-{digest}-in", f"run-{digest}-out"


class InvalidBlobName(ValueError):
    pass


class MissingContainer(RuntimeError):
    """A container the pipeline needs is gone (deleted, or never created): an operator's fix."""


def check_blob_name(name: str) -> str:
    """Blob names become local file names and URLs: refuse the ones that could escape."""
    if not name or len(name) > 1024:
        raise InvalidBlobName("the blob name is empty or longer than 1024 characters")
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InvalidBlobName(f"blob name {name!r} has an empty, '.' or '..' path segment")
    if any(ord(ch) < 32 for ch in name):
        raise InvalidBlobName(f"blob name {name!r} has control characters")
    return name


@dataclass(frozen=True)
class BlobInfo:
    name: str
    etag: str
    size: int
    last_modified: str  # ISO 8601, UTC
    metadata: dict


class BlobStore:
    """One storage account, through the provider's WasbHook (connection string, SAS, or AAD)."""

    def __init__(self, conn_id: str):
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        self.conn_id = conn_id
        self.client = WasbHook(wasb_conn_id=conn_id).get_conn()

    def info(self, container: str, name: str, snapshot: str | None = None) -> BlobInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.client.get_blob_client(container, name, snapshot=snapshot).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return _blob_info(props)

    @contextmanager
    def _container_must_exist(self, container: str):
        """The SDK's error for a missing container is ten lines of XML; say it in one."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            yield
        except ResourceNotFoundError as exc:
            if exc.error_code != "ContainerNotFound":
                raise
            raise MissingContainer(missing(container, self.client.account_name)) from None

    def require(self, *containers: str) -> None:
        """MissingContainer, in one line naming it, unless every one of ``containers`` exists."""
        from azure.core.exceptions import ResourceNotFoundError

        for container in containers:
            try:
                self.client.get_container_client(container).get_container_properties()
            except ResourceNotFoundError:
                raise MissingContainer(missing(container, self.client.account_name)) from None

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        with self._container_must_exist(container):
            blobs = self.client.get_container_client(container).list_blobs(name_starts_with=prefix or None,
                                                                          include=["metadata"])
            return [_blob_info(b) for b in blobs]

    def download(self, container: str, name: str, path: Path, etag: str | None = None,
                 snapshot: str | None = None) -> BlobInfo:
        """Download to ``path`` atomically; with ``etag``, only that version (else it fails);
        with ``snapshot``, that snapshot of the blob."""
        from azure.core import MatchConditions

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")  # never shared
        blob = self.client.get_blob_client(container, name, snapshot=snapshot)
        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        with self._container_must_exist(container):
            stream = blob.download_blob(max_concurrency=4, **kwargs)
        with open(tmp, "wb") as f:
            stream.readinto(f)
        os.replace(tmp, path)
        return _blob_info(stream.properties)

    def upload(self, path: Path, container: str, name: str, metadata: dict | None = None,
               content_type: str | None = None) -> None:
        """A block blob is committed in one step, so readers never see a partial upload."""
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_type=content_type) if content_type else None
        with open(path, "rb") as f, self._container_must_exist(container):
            self.client.get_blob_client(container, name).upload_blob(
                f, overwrite=True, metadata=metadata, content_settings=settings, max_concurrency=4)

    def publish(self, path: Path, container: str, name: str, metadata: dict, seen_etag: str | None) -> str | None:
        """Upload ``path`` as ``name`` only if that blob is still as the caller saw it: absent
        (``seen_etag`` None) or at version ``seen_etag``. Returns the new etag, or None when
        someone else wrote it first (nothing is changed then)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        condition = ({"etag": seen_etag, "match_condition": MatchConditions.IfNotModified} if seen_etag
                     else {"match_condition": MatchConditions.IfMissing})
        try:
            with open(path, "rb") as f, self._container_must_exist(container):
                done = self.client.get_blob_client(container, name).upload_blob(
                    f, overwrite=True, metadata=metadata, max_concurrency=4, **condition)
        except (ResourceExistsError, ResourceModifiedError):
            return None
        return str(done["etag"]).strip('"')

    def publish_beside(self, data: bytes, container: str, name: str, subject: str, subject_etag: str,
                       content_type: str, attempts: int = 20) -> bool:
        """Write ``data`` as ``name``, tied to blob ``subject`` at ``subject_etag``: only
        while that version is in place, never over a write made after it was. Returns False,
        writing nothing, once ``subject`` has been replaced (its new writer writes ``name``).

        Each try reads ``name``'s version, then checks ``subject``, then writes on condition
        of that version; the last write to succeed is therefore from the newest ``subject``."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import ContentSettings

        target = self.client.get_blob_client(container, name)
        for _ in range(attempts):
            current = self.info(container, name)
            subject_now = self.info(container, subject)
            if subject_now is None or subject_now.etag != subject_etag:
                return False
            condition = ({"etag": current.etag, "match_condition": MatchConditions.IfNotModified} if current
                         else {"match_condition": MatchConditions.IfMissing})
            try:
                target.upload_blob(data, overwrite=True, metadata={"describes_etag": subject_etag},
                                   content_settings=ContentSettings(content_type=content_type), **condition)
                return True
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another writer between our read and write: look again
        raise RuntimeError(f"{container}/{name}: {attempts} tries lost to concurrent writers")

    def upload_text(self, text: str, container: str, name: str, content_type: str = "text/plain") -> None:
        from azure.storage.blob import ContentSettings

        with self._container_must_exist(container):
            self.client.get_blob_client(container, name).upload_blob(
                text.encode(), overwrite=True, content_settings=ContentSettings(content_type=content_type))

    def read_text(self, container: str, name: str) -> str | None:
        """The blob's text, or None where there is no such blob (a missing container raises)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self._container_must_exist(container):
                return self.client.get_blob_client(container, name).download_blob().readall().decode()
        except ResourceNotFoundError:
            return None

    def append_text(self, container: str, name: str, text: str) -> None:
        """Append ``text`` to the append blob ``name`` as one block, making the blob if it is
        not there yet (never over one that is: a blob holds at most 50,000 blocks)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        blob = self.client.get_blob_client(container, name)
        with self._container_must_exist(container):
            try:
                blob.append_block(text.encode())
                return
            except ResourceNotFoundError as exc:
                if exc.error_code == "ContainerNotFound":
                    raise
            try:
                blob.create_append_blob(match_condition=MatchConditions.IfMissing)
            except ResourceExistsError:
                pass  # made by another writer meanwhile
            blob.append_block(text.encode())

    def delete(self, container: str, name: str, etag: str | None = None) -> bool:
        """Delete the blob; with ``etag``, only while it is that version. False if it is gone
        or is another version now."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            self.client.get_blob_client(container, name).delete_blob(**kwargs)
        except (ResourceNotFoundError, ResourceModifiedError):
            return False
        return True

    def snapshot(self, container: str, name: str, etag: str | None = None) -> str:
        """A read-only snapshot of the blob as it is now (with ``etag``: only while it is that
        version, else ResourceModifiedError); its id reads exactly these bytes later."""
        from azure.core import MatchConditions

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        return self.client.get_blob_client(container, name).create_snapshot(**kwargs)["snapshot"]

    def copy(self, container: str, name: str, target_container: str, target_name: str, timeout: float = 600,
             snapshot: str | None = None, etag: str | None = None, metadata: dict | None = None) -> str:
        """Server-side copy within this account; the source is read, never changed. With
        ``snapshot``, that snapshot is the source; with ``etag``, the copy happens only while the
        source is that version (else ResourceModifiedError); ``metadata`` replaces the source's.
        Returns the copy's etag."""
        import time

        from azure.core import MatchConditions

        source = self.client.get_blob_client(container, name, snapshot=snapshot)
        target = self.client.get_blob_client(target_container, target_name)
        source_url = source.url
        sas = getattr(self.client.credential, "signature", None)  # a SAS-only connection (AzureSasCredential)
        if sas and "sig=" not in source_url:  # the service reads the source with it: it must be in the URL
            source_url += ("&" if "?" in source_url else "?") + sas.lstrip("?")
        condition = {"source_etag": etag, "source_match_condition": MatchConditions.IfNotModified} if etag else {}
        started = target.start_copy_from_url(source_url, metadata=metadata, **condition)
        if started["copy_status"] == "success":  # the usual answer within one account
            return str(started["etag"]).strip('"')
        deadline = time.monotonic() + timeout
        while (props := target.get_blob_properties()).copy.status == "pending":
            if time.monotonic() > deadline:
                target.abort_copy(props.copy.id)
                raise TimeoutError(f"copying {container}/{name} took over {timeout:.0f} s")
            time.sleep(0.5)
        if props.copy.status != "success":
            raise RuntimeError(f"copying {container}/{name} ended {props.copy.status}")
        return str(props.etag).strip('"')

    def sync_down(self, container: str, prefix: str, folder: Path) -> int:
        """Fetch every blob under ``prefix`` missing locally (or of another size). Returns the count.

        A name that could land outside ``folder`` (``..``, an empty segment, an absolute
        path) raises InvalidBlobName before anything is fetched: whoever holds the run's
        write token can name blobs.
        """
        blobs = self.list(container, prefix)
        for blob in blobs:
            try:
                check_blob_name(blob.name[len(prefix):])
            except InvalidBlobName as exc:
                raise InvalidBlobName(f"{container}/{blob.name} cannot be fetched: {exc}") from None
        fetched = 0
        for blob in blobs:
            local = folder / blob.name[len(prefix):]
            if not (local.is_file() and local.stat().st_size == blob.size):
                self.download(container, blob.name, local)
                fetched += 1
        return fetched

    def sync_up(self, folder: Path, container: str, prefix: str, suffixes: tuple[str, ...] = ()) -> int:
        """Upload every finished file in ``folder`` not yet in storage; ``.partial`` files never go up.

        ``suffixes`` orders the upload: files ending in them go last (e.g. ``.done`` markers
        after the segments they vouch for).
        """
        remote = {b.name: b.size for b in self.list(container, prefix)}
        files = sorted((p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: (p.name.endswith(suffixes) if suffixes else False, str(p)))
        sent = 0
        for path in files:
            name = prefix + path.relative_to(folder).as_posix()
            if remote.get(name) != path.stat().st_size:
                self.upload(path, container, name)
                sent += 1
        return sent

    def read_link(self, container: str, name: str, hours: float) -> str | None:
        """A URL that reads the one blob ``name`` for ``hours`` and allows nothing else; None
        when this connection cannot sign (a SAS-only connection): signed with the account key,
        or with a user delegation key where the connection uses Entra ID."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.now(UTC)
        start, expiry = now - timedelta(minutes=5), now + timedelta(hours=hours)  # minutes of clock skew
        key = getattr(self.client.credential, "account_key", None)
        delegation = None
        if not key:
            if not hasattr(self.client.credential, "get_token"):
                return None
            delegation = self.client.get_user_delegation_key(start, expiry)
        blob = self.client.get_blob_client(container, name)
        token = generate_blob_sas(self.client.account_name, container, name, account_key=key,
                                  user_delegation_key=delegation, permission=BlobSasPermissions(read=True),
                                  start=start, expiry=expiry,
                                  protocol="https,http" if blob.url.startswith("http://") else "https")
        return f"{blob.url}?{token}"

    def ensure_container(self, container: str) -> bool:
        """Create the container unless it exists; True if it was made."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_container(container)
        except ResourceExistsError as exc:
            if exc.error_code == "ContainerBeingDeleted":  # deleted moments ago: not there, not makeable yet
                raise MissingContainer(f"container {container} in storage account {self.client.account_name} "
                                       "is still being deleted: try again in a minute") from None
            return False
        return True

    def delete_container(self, container: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.client.delete_container(container)
        except ResourceNotFoundError:
            return False
        return True


def _blob_info(props) -> BlobInfo:
    return BlobInfo(name=props.name, etag=str(props.etag).strip('"'), size=props.size,
                    last_modified=props.last_modified.isoformat(), metadata=dict(props.metadata or {}))


def missing(container: str, account: str) -> str:
    return (f"container {container} does not exist in storage account {account}: "
            "`python -m deployment init` makes every container the pipeline needs (docs/deploying.md)")


def create_containers(data: BlobStore, system: BlobStore) -> list[str]:
    """Every container the pipeline needs, in both accounts; returns those that were missing."""
    made = []
    for store, names in ((data, DATA_CONTAINERS), (system, SYSTEM_CONTAINERS)):
        for name in names:
            if store.ensure_container(name):
                made.append(f"{store.client.account_name}/{name}")
    return made
