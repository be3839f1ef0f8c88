"""An Azure ML workspace at the HTTP boundary, for the tests: what Azurite is for storage.

The real ``azure-ai-ml`` ``MLClient``, its credential (``ClientSecretCredential``,
``DefaultAzureCredential``...), its models, pollers and retries all run; the process they run
in only points its HTTPS proxy at the emulator and trusts the emulator's CA
(:meth:`AzureMLEmulator.environment`). Nothing above HTTP is replaced.

    emulator = AzureMLEmulator(tmp, storage={"sysaccount1": ("http://127.0.0.1:PORT/sysaccount1", KEY)},
                               storage_account="sysaccount1")
    os.environ.update(emulator.environment())
    MLClient(ClientSecretCredential("tenant", "id", "secret"), "sub", "rg", "ws").compute.get("vst-gpu")

Tests script it through this handle: ``emulator.runner.script("preempt-fail", "complete")``,
``emulator.runner.quota_nodes = 0`` (queued for want of quota), ``emulator.workspace.fail(
"GET .*/jobs/", 429, headers={"Retry-After": "1"})`` (or 401 ``ExpiredAuthenticationToken``),
``emulator.runner.studio_cancel(name)``; and read what the service saw: ``workspace.requests``,
``workspace.sign_ins``, ``workspace.cancel_requests``, ``runner.runs[name].attempts``.
"""

from __future__ import annotations

from pathlib import Path

from .runner import Run, Runner
from .service import ARTIFACT_STORE, BLOB_STORE, Workspace
from .tls import make_ca_and_server
from .wire import WireServer

WORKSPACE = {"subscription_id": "00000000-0000-0000-0000-000000000001", "resource_group": "rg-vst",
             "workspace_name": "ws-vst"}


class AzureMLEmulator:
    def __init__(self, root: Path, storage: dict[str, tuple[str, str]], storage_account: str,
                 workspace: dict = WORKSPACE, **runner_settings):
        root = Path(root)
        self.workspace = Workspace(workspace["subscription_id"], workspace["resource_group"],
                                   workspace["workspace_name"], storage, storage_account)
        self.runner = Runner(self.workspace, root / "service", **runner_settings)
        self.workspace.runner = self.runner
        blobs = self.runner.storage_client(storage_account)
        for name, container in ((ARTIFACT_STORE, "azureml"), (BLOB_STORE, f"azureml-blobstore-{self.workspace.id}")):
            if not blobs.get_container_client(container).exists():
                blobs.create_container(container)
            self.workspace.add_datastore(name, container, default=name == BLOB_STORE)
        self.ca_bundle, tls = make_ca_and_server(root / "tls")
        self.server = WireServer(self.workspace, tls)

    def environment(self) -> dict[str, str]:
        """What a process needs to reach Azure through the emulator (and everything local directly)."""
        proxy = f"http://127.0.0.1:{self.server.port}"
        return {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "http_proxy": proxy,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "REQUESTS_CA_BUNDLE": str(self.ca_bundle), "SSL_CERT_FILE": str(self.ca_bundle)}

    @property
    def runs(self) -> dict[str, Run]:
        return self.runner.runs

    def left_queued(self, name: str, tags: dict, experiment_name: str = "video-style-transfer",
                    compute: str = "vst-gpu") -> Run:
        """A job someone submitted earlier and left: it waits for nodes like any other."""
        ws = self.workspace
        ws.jobs[name] = {"id": f"{ws.arm_prefix}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices"
                         "/workspaces/jobs",
                         "properties": {"jobType": "Command", "command": "echo never runs", "tags": tags,
                                        "experimentName": experiment_name, "displayName": name,
                                        "computeId": f"{ws.arm_prefix}/computes/{compute}", "status": "NotStarted",
                                        "services": {}, "outputs": {}},
                         "systemData": {"createdAt": "2025-01-01T00:00:00Z"}}
        self.runner.outcomes.appendleft("fail")
        self.runner.start(name)
        return self.runs[name]

    def close(self) -> None:
        self.runner.shutdown()
        self.server.close()


__all__ = ["WORKSPACE", "AzureMLEmulator"]
