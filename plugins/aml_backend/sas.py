"""Short-lived, least-privilege SAS tokens for the data of one Azure ML job.

What scope, and why
-------------------
A SAS on plain (flat namespace) blob storage is scoped to an account, a container or a
single blob; there is no prefix-scoped SAS (the directory SAS, ``sr=d``, exists only on
accounts with a hierarchical namespace). The job reads a folder of segments and writes a
folder of styled segments through Azure ML's blob mounts, and a mount needs one credential
for a container (a per-blob SAS would mean the job fetching each blob itself: a different
command from the local backend, which we refuse). So the honest best option is:

* a **container SAS** (``sr=c``) held by an **Azure ML datastore** registered for this run
  (``SasTokenConfiguration``): the job's inputs and output are ``azureml://datastores/<ds>/
  paths/<prefix>`` paths, and the token never appears in the job definition, its logs or XCom;
* the token's scope is the container: it reaches exactly the run's data when the run's job
  data lives in a container of its own. When the data sits under a prefix of a shared
  container, the job *mounts* only its prefix but the token could reach the rest of that
  container (never another container, never the data account) -- :func:`container_sas`
  logs that, and the README recommends a per-run container for exact scoping;
* **separate tokens per direction**: the input datastore's token can only read and list;
  the output datastore's token cannot read anything outside what the mount itself needs;
* **an expiry that covers the job, no more**: the run's deadline (the task's time limit from
  its first try: the trigger cancels the job then, and a job waiting longer than ``max_queued``
  for nodes is cancelled before) plus a margin, so a low-priority job that queues for hours
  still mounts its data; re-issued on every (re)submission, and the run's datastores (which
  hold the tokens) are removed when the score step ends;
* signed with a **user delegation key** when the storage connection authenticates with
  Entra ID (no account key anywhere), or with the account key when the connection holds one:
  the key signs the token locally and is never sent, logged or stored.

Output permissions: the scoring step resumes from finished segments, and on a read-write
mount that needs more than create+write: seeing which segments are done means reading
their markers and listing the folder, and the atomic rename of a finished segment is a
copy plus a delete of its ``.partial`` name on blob storage. So:

* ``OUTPUT_RESUMABLE`` = read, create, write, delete, list -- the default, for ``rw_mount``:
  finished segments survive a preemption and a resubmitted job skips them;
* ``OUTPUT_WRITE_ONLY`` = create, write (no read, no list, no delete) -- for
  ``output_mode="upload"``: Azure ML uploads the folder when the job ends, so a preempted
  job starts over. Use it when write-only access matters more than GPU hours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

log = logging.getLogger(__name__)

INPUT = ContainerSasPermissions(read=True, list=True)
OUTPUT_RESUMABLE = ContainerSasPermissions(read=True, create=True, write=True, delete=True, list=True)
OUTPUT_WRITE_ONLY = ContainerSasPermissions(create=True, write=True)
DEFAULT_EXPECTED = timedelta(hours=2)
MARGIN = timedelta(minutes=30)
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Signer:
    """What signs tokens for one storage account: a user delegation key (preferred) or the
    account key. ``repr`` never shows either."""

    account_name: str
    account_key: str | None = None
    user_delegation_key: object | None = None

    def __repr__(self) -> str:
        kind = "user delegation key" if self.user_delegation_key is not None else "account key"
        return f"Signer({self.account_name!r}, {kind})"

    @classmethod
    def from_service_client(cls, client, expiry: datetime) -> Signer:
        """From a ``BlobServiceClient`` (e.g. ``WasbHook(conn_id).get_conn()``)."""
        key = getattr(client.credential, "account_key", None)
        if key:
            return cls(client.account_name, account_key=key)
        if hasattr(client.credential, "get_token"):  # Entra ID: ask the service for a delegation key
            now = datetime.now(UTC)
            return cls(client.account_name,
                       user_delegation_key=client.get_user_delegation_key(now - CLOCK_SKEW, expiry))
        raise ValueError(f"the storage connection for {client.account_name} can sign no SAS (it holds neither an "
                         "account key nor an Entra ID credential): use a connection string or a service principal")


def expiry_for(expected: timedelta = DEFAULT_EXPECTED, now: datetime | None = None) -> datetime:
    """When a token for a job that may take ``expected`` (queueing included) should stop working."""
    return (now or datetime.now(UTC)) + expected + MARGIN


def expiry_at(deadline: float) -> datetime:
    """When a token for a job cancelled at ``deadline`` (epoch seconds) should stop working."""
    return datetime.fromtimestamp(deadline, UTC) + MARGIN


def container_sas(signer: Signer, container: str, permission: ContainerSasPermissions, expiry: datetime,
                  prefix: str = "", protocol: str = "https") -> str:
    """A container SAS (``sr=c``) with exactly ``permission``, valid from a few minutes ago
    (clock skew) until ``expiry``, HTTPS only (``protocol="https,http"`` is for an emulator
    such as Azurite, which serves plain HTTP on 127.0.0.1)."""
    if prefix.strip("/"):
        log.info("SAS for %s/%s covers container %s as a whole (blob storage has no prefix-scoped SAS); "
                 "a per-run container makes it exact", container, prefix.strip("/"), container)
    return generate_container_sas(signer.account_name, container, account_key=signer.account_key,
                                  user_delegation_key=signer.user_delegation_key, permission=permission,
                                  start=datetime.now(UTC) - CLOCK_SKEW, expiry=expiry, protocol=protocol)


def protocol_for(endpoint: str) -> str:
    """HTTPS only, unless the storage endpoint itself is plain HTTP (an emulator such as Azurite)."""
    return "https,http" if endpoint.startswith("http://") else "https"


def describe(token: str) -> dict:
    """The fields of a SAS token that say what it allows (for tests and logs; no signature)."""
    fields = {k: v[0] for k, v in parse_qs(token.lstrip("?")).items()}
    return {"permission": fields.get("sp", ""), "resource": fields.get("sr", ""), "start": fields.get("st"),
            "expiry": fields.get("se"), "protocol": fields.get("spr")}
