"""The Azure ML workspace the emulator plays: Entra ID's token endpoints, the ARM resources the
plugin touches (computes, jobs, datastores, environments, code), the workspace's discovery and
run history, and its storage account (a front on Azurite).

Bodies take the shapes of the REST API specification's examples (Azure/azure-rest-api-specs,
``specification/machinelearningservices/.../stable/2025-09-01/examples``): the service upper-
cases a cluster's ``vmSize``, strips secrets from what it returns, answers a cancel with 202 and
a ``Location`` to poll, a cluster's creation with 201 and an ``Azure-AsyncOperation``.
"""

from __future__ import annotations

import http.client
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urlsplit

from .wire import Request, Response

ARM = "management.azure.com"
LOGIN = "login.microsoftonline.com"
# The sovereign clouds' ARM and Entra ID hosts answer the same (the workspace lives in all of them).
ARM_HOSTS = frozenset({ARM, "management.usgovcloudapi.net", "management.chinacloudapi.cn"})
LOGIN_HOSTS = frozenset({LOGIN, "login.microsoftonline.us", "login.chinacloudapi.cn"})
IMDS = "169.254.169.254"
REGION = "eastus"
DATA_PLANE = f"{REGION}.api.azureml.ms"
PROVIDER = "Microsoft.MachineLearningServices"
ARTIFACT_STORE, BLOB_STORE = "workspaceartifactstore", "workspaceblobstore"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return Response(status, {"error": {"code": code, "message": message}}, headers or {})


@dataclass
class Fault:
    """What the next ``count`` requests whose ``METHOD path`` matches ``match`` (a regex) get instead."""

    match: str
    status: int
    code: str
    message: str
    headers: dict = field(default_factory=dict)
    count: int = 1
    seen: int = 0


@dataclass
class Token:
    audience: str
    identity: dict
    expires: float


class Workspace:
    """The service's state for one workspace; its jobs are played by ``runner.Runner``."""

    def __init__(self, subscription: str, resource_group: str, name: str, storage: dict[str, tuple[str, str]],
                 storage_account: str):
        self.subscription, self.resource_group, self.name = subscription, resource_group, name
        self.storage, self.storage_account = storage, storage_account  # account -> (Azurite URL, key)
        self.id = str(uuid.UUID(int=0x5A5A))  # the workspace's GUID (its blob store's container name)
        self.computes: dict[str, dict] = {}
        self.nodes: dict[str, list[dict]] = {}  # cluster -> nodes as listNodes reports them
        self.jobs: dict[str, dict] = {}
        self.datastores: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}  # datastore -> its credentials' secrets (never returned)
        self.environments: dict[tuple[str, str], dict] = {}
        self.codes: dict[tuple[str, str], dict] = {}
        self.operations: dict[str, tuple] = {}  # long-running operation id -> ("is it done?", Retry-After)
        self.tokens: dict[str, Token] = {}
        self.sign_ins: list[dict] = []  # what each token request presented
        self.client_secrets: dict[str, str] = {}  # client id -> the secret Entra ID accepts (none: any)
        self.faults: list[Fault] = []
        self.requests: deque[tuple[float, str, str, str]] = deque(maxlen=5000)  # (time, host, method, path?query)
        self.deleted_datastores: list[str] = []
        self.registered_tokens: list[str] = []  # the SAS of every datastore registration
        self.cancel_requests: list[str] = []
        self.token_lifetime = 3600
        self.lock = threading.RLock()
        self.runner = None  # set by the emulator

    @property
    def arm_prefix(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PROVIDER}"
                f"/workspaces/{self.name}")

    # ------------------------------------------------------------------ the front door

    def __call__(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((time.time(), request.host, request.method, request.raw_path))
        if request.host in LOGIN_HOSTS:
            return self.entra(request)
        if request.host == IMDS:
            return self.imds(request)
        if request.host.endswith(".blob.core.windows.net"):
            return self.blob(request)
        refused = None if request.path == "/discovery" else self._authorize(request)
        if refused is not None:
            return refused
        fault = self._fault(request)
        if fault is not None:
            return fault
        if request.host in ARM_HOSTS:
            return self.arm(request)
        if request.host == DATA_PLANE:
            return self.data_plane(request)
        return error(404, "HostNotFound", f"the emulator does not play {request.host}")

    def fail(self, match: str, status: int, code: str = "", message: str = "", count: int = 1,
             headers: dict | None = None) -> Fault:
        """The next ``count`` requests whose ``METHOD path`` matches ``match`` get ``status``."""
        fault = Fault(match, status, code or {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "Error"),
                      message or f"emulated {status}", headers or {}, count)
        with self.lock:
            self.faults.append(fault)
        return fault

    def _fault(self, request: Request) -> Response | None:
        with self.lock:
            for fault in self.faults:
                if fault.seen < fault.count and re.search(fault.match, f"{request.method} {request.path}"):
                    fault.seen += 1
                    return error(fault.status, fault.code, fault.message, fault.headers)
        return None

    def _authorize(self, request: Request) -> Response | None:
        """ARM's answers to a missing, unknown or expired bearer token (401, with a challenge)."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = self.tokens.get(value) if scheme.lower() == "bearer" else None
        challenge = {"WWW-Authenticate": f'Bearer authorization_uri="https://{LOGIN}/", error="invalid_token", '
                                         'error_description="The access token is missing, invalid or expired"'}
        if token is None:
            return error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing "
                         "or has an invalid token.", challenge)
        if token.expires < time.time():
            return error(401, "ExpiredAuthenticationToken", "The access token expiry UTC time "
                         f"'{datetime.fromtimestamp(token.expires, UTC):%m/%d/%Y %H:%M:%S}' is earlier than "
                         "current UTC time.", challenge)
        return None

    # ------------------------------------------------------------------ Entra ID

    def entra(self, request: Request) -> Response:
        tenant = request.path.strip("/").split("/")[0]
        if request.path.endswith("/.well-known/openid-configuration"):
            base = f"https://{request.host}/{tenant}"
            return Response(200, {"token_endpoint": f"{base}/oauth2/v2.0/token",
                                  "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                                  "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                                  "issuer": f"https://{request.host}/{tenant}/v2.0",
                                  "tenant_region_scope": "EU"})
        if request.path.endswith("/discovery/instance"):
            return Response(200, {"tenant_discovery_endpoint": f"https://{request.host}/{tenant}/v2.0/.well-known/"
                                                               "openid-configuration", "metadata": []})
        if request.method == "POST" and request.path.endswith("/oauth2/v2.0/token"):
            form = dict(request.query) | dict(_form(request.body))
            client = form.get("client_id", "")
            if "client_assertion" in form:
                grant = "workload_identity"
            elif "client_secret" in form:
                grant = "client_secret"
                expected = self.client_secrets.get(client)
                if expected is not None and form["client_secret"] != expected:
                    return Response(401, {"error": "invalid_client", "error_description":
                                          "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]})
            else:
                grant = form.get("grant_type", "unknown")
            identity = {"tenant": tenant, "client_id": client, "grant": grant, "authority": request.host}
            return Response(200, self._issue(form.get("scope", ""), identity))
        return error(404, "NotFound", f"Entra ID path {request.path}")

    def imds(self, request: Request) -> Response:
        """The instance metadata endpoint of a VM with a managed identity."""
        if request.headers.get("metadata", "").lower() != "true":
            return Response(400, {"error": "invalid_request",
                                  "error_description": "Required metadata header not specified"})
        identity = {"tenant": None, "client_id": request.query.get("client_id"), "grant": "managed_identity",
                    "authority": IMDS}
        token = self._issue(request.query.get("resource", "") + "/.default", identity)
        return Response(200, {**token, "expires_on": str(int(time.time()) + token["expires_in"]),
                              "resource": request.query.get("resource"), "expires_in": str(token["expires_in"])})

    def _issue(self, scope: str, identity: dict) -> dict:
        audience = scope.split()[0].removesuffix("/.default") if scope else ""
        value = _jwt({"aud": audience, "tid": identity["tenant"] or "emulated-tenant", "appid": identity["client_id"],
                      "oid": str(uuid.uuid4()), "exp": int(time.time()) + self.token_lifetime,
                      "jti": secrets.token_hex(8)})
        with self.lock:
            self.tokens[value] = Token(audience, identity, time.time() + self.token_lifetime)
            self.sign_ins.append({**identity, "audience": audience})
        return {"token_type": "Bearer", "expires_in": self.token_lifetime, "ext_expires_in": self.token_lifetime,
                "access_token": value}

    # ------------------------------------------------------------------ ARM

    def arm(self, request: Request) -> Response:
        path = request.path
        operation = re.fullmatch(rf"/subscriptions/[^/]+/providers/{PROVIDER}/locations/[^/]+/"
                                 r"(?:mfeOperationResults|computeOperationsStatus)/([^/]+)", path, re.I)
        if operation:
            return self._operation(request, operation.group(1))
        if not path.lower().startswith(self.arm_prefix.lower()):
            return error(404, "ResourceNotFound", f"The Resource '{path}' was not found.")
        rest = path[len(self.arm_prefix):].strip("/").split("/")
        kind, args = rest[0] if rest[0] else "", rest[1:]
        handler = getattr(self, f"_{kind}", None) if kind else self._workspace
        if handler is None:
            return error(404, "NotFound", f"the emulator does not serve {kind}")
        return handler(request, *args)

    def _workspace(self, request: Request) -> Response:
        return Response(200, {
            "id": self.arm_prefix, "name": self.name, "type": f"{PROVIDER}/workspaces", "location": REGION,
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.UUID(int=1)), "tenantId": "tenant"},
            "kind": "Default", "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {"friendlyName": self.name, "workspaceId": self.id, "provisioningState": "Succeeded",
                           "discoveryUrl": f"https://{DATA_PLANE}/discovery",
                           "storageAccount": f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                                             f"/providers/Microsoft.Storage/storageAccounts/{self.storage_account}",
                           "mlFlowTrackingUri": f"azureml://{DATA_PLANE}/mlflow/v1.0{self.arm_prefix}"}})

    def _operation(self, request: Request, operation_id: str) -> Response:
        if operation_id not in self.operations:
            return error(404, "NotFound", f"operation {operation_id}")
        done, retry_after = self.operations[operation_id]
        if done():
            return Response(200, {"status": "Succeeded"})
        headers = {"Location": f"https://{ARM}{request.raw_path}"}
        if retry_after:
            headers["Retry-After"] = retry_after
        return Response(202, {"status": "InProgress"}, headers)

    def operation_url(self, kind: str, operation_id: str, done, retry_after: str | None = None) -> str:
        self.operations[operation_id] = (done, retry_after)
        return (f"https://{ARM}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{REGION}/{kind}/"
                f"{operation_id}?api-version=2025-09-01")

    # computes

    def _computes(self, request: Request, name: str = "", action: str = "") -> Response:
        compute = self.computes.get(name)
        if action == "listNodes" and request.method == "POST":
            if compute is None:
                return error(404, "ResourceNotFound", f"compute {name} not found")
            return Response(200, {"nodes": list(self.nodes.get(name, [])), "nextLink": None})
        if request.method == "GET":
            if not name:
                return Response(200, {"value": list(self.computes.values())})
            if compute is None:
                return error(404, "ResourceNotFound", f"The Resource '{PROVIDER}/workspaces/{self.name}/computes/"
                             f"{name}' under resource group '{self.resource_group}' was not found.")
            return Response(200, compute)
        if request.method == "PUT":
            return self._create_compute(request, name)
        return error(405, "MethodNotAllowed", request.method)

    def _create_compute(self, request: Request, name: str) -> Response:
        body = request.json()
        props = body["properties"].get("properties") or {}
        current = self.computes.get(name)
        wanted = (str(props.get("vmSize", "")).upper(), props.get("vmPriority"))
        if current is not None and wanted != (current["properties"]["properties"]["vmSize"],
                                              current["properties"]["properties"]["vmPriority"]):
            return error(400, "BadRequest", "vmSize and vmPriority of an existing AmlCompute cannot be updated")
        scale = props.get("scaleSettings") or {}
        created = time.time()
        compute = {
            "id": f"{self.arm_prefix}/computes/{name}", "name": name, "type": f"{PROVIDER}/workspaces/computes",
            "location": body.get("location") or REGION, "identity": body.get("identity"), "tags": body.get("tags"),
            "properties": {
                "computeType": "AmlCompute", "description": body["properties"].get("description"),
                "createdOn": _now(), "modifiedOn": _now(), "provisioningState": "Creating",
                "disableLocalAuth": body["properties"].get("disableLocalAuth", False),
                "properties": {
                    **props, "vmSize": wanted[0],  # the service reports sizes upper-cased
                    "vmPriority": props.get("vmPriority", "Dedicated"), "osType": props.get("osType", "Linux"),
                    "scaleSettings": {"maxNodeCount": scale.get("maxNodeCount", 1),
                                      "minNodeCount": scale.get("minNodeCount", 0),
                                      "nodeIdleTimeBeforeScaleDown": scale.get("nodeIdleTimeBeforeScaleDown", "PT2M")},
                    "remoteLoginPortPublicAccess": props.get("remoteLoginPortPublicAccess", "NotSpecified"),
                    "enableNodePublicIp": props.get("enableNodePublicIp", True),
                    "allocationState": "Steady", "currentNodeCount": 0, "targetNodeCount": 0,
                    "nodeStateCounts": {"preparingNodeCount": 0, "runningNodeCount": 0, "idleNodeCount": 0,
                                        "unusableNodeCount": 0, "leavingNodeCount": 0, "preemptedNodeCount": 0},
                    "errors": None}}}
        self.computes[name] = compute
        self.nodes.setdefault(name, [])

        def provisioned() -> bool:
            if time.time() - created >= 0.5:
                compute["properties"]["provisioningState"] = "Succeeded"
                return True
            return False

        operation = self.operation_url("computeOperationsStatus", uuid.uuid4().hex, provisioned, "1")
        return Response(201, compute, {"Azure-AsyncOperation": operation, "Retry-After": "1"})

    # jobs

    def _jobs(self, request: Request, name: str = "", action: str = "") -> Response:
        if not name:
            return self._list_jobs(request)
        job = self.jobs.get(name)
        if action == "cancel" and request.method == "POST":
            if job is None:
                return error(404, "UserError", f"job {name} not found")
            self.cancel_requests.append(name)
            self.runner.cancel(name)
            location = self.operation_url("mfeOperationResults", f"jc:{self.id}:{name}",
                                          lambda: self.runner.status(name) in self.runner.TERMINAL)
            return Response(202, None, {"Location": location})  # no Retry-After: the SDK polls every 30 s
        if request.method == "GET":
            if job is None:
                return error(404, "UserError", f"Job {name} was not found in workspace {self.name}")
            return Response(200, self.job_body(name))
        if request.method == "PUT":
            if job is not None:  # a job's name is used once in a workspace, for good
                return error(409, "UserError", f"A job with name {name} already exists in workspace {self.name}: "
                             "job names must be unique")
            return self._submit(request, name)
        return error(405, "MethodNotAllowed", request.method)

    def _list_jobs(self, request: Request) -> Response:
        tag = request.query.get("tag")
        names = [n for n, job in self.jobs.items() if tag is None or tag in (job["properties"].get("tags") or {})]
        skip = int(request.query.get("$skip") or 0)
        page = names[skip:skip + 2]  # small pages, so the SDK's paging really runs
        next_link = None
        if skip + 2 < len(names):
            next_link = f"https://{ARM}{request.path}?{urlencode({**request.query, '$skip': skip + 2})}"
        return Response(200, {"value": [self.job_body(n) for n in page], "nextLink": next_link})

    def _submit(self, request: Request, name: str) -> Response:
        body = request.json()
        props = body["properties"]
        compute = (props.get("computeId") or "").rsplit("/", 1)[-1]
        if compute not in self.computes:
            return error(400, "UserError", f"Compute {compute} not found in workspace {self.name}")
        env_name, env_version = _versioned(props.get("environmentId", ""), "environments")
        if (env_name, env_version) not in self.environments:
            return error(400, "UserError", f"Environment {env_name}:{env_version} not found")
        if _versioned(props.get("codeId", ""), "codes") not in self.codes:
            return error(400, "UserError", f"Code {props.get('codeId')} not found")
        outputs = dict(props.get("outputs") or {})
        outputs.setdefault("default", {"jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                                       "uri": f"azureml://datastores/{ARTIFACT_STORE}/ExperimentRun/dcid.{name}"})
        self.jobs[name] = {
            "id": f"{self.arm_prefix}/jobs/{name}", "name": name, "type": f"{PROVIDER}/workspaces/jobs",
            "properties": {**props, "outputs": outputs, "status": "NotStarted",
                           "services": {"Studio": {"jobServiceType": "Studio", "endpoint": self.studio_url(name)},
                                        "Tracking": {"jobServiceType": "Tracking",
                                                     "endpoint": f"azureml://{DATA_PLANE}/mlflow/v1.0"
                                                                 f"{self.arm_prefix}?"}}},
            "systemData": {"createdAt": _now(), "createdBy": "airflow", "createdByType": "Application",
                           "lastModifiedAt": _now()}}
        self.runner.start(name)
        return Response(201, self.job_body(name))

    def job_body(self, name: str) -> dict:
        job, run = self.jobs[name], self.runner.runs.get(name)
        with self.runner.lock:
            status = self.runner.status(name)
            if run is not None:
                run.read_at = len(run.history)
        return {**job, "properties": {**job["properties"], "status": status}}

    def studio_url(self, name: str) -> str:
        return f"https://ml.azure.com/runs/{name}?wsid={self.arm_prefix}"

    # datastores

    def _datastores(self, request: Request, name: str = "", action: str = "") -> Response:
        if not name:
            wanted = request.query.get("isDefault")
            stores = [s for s in self.datastores.values()
                      if wanted is None or str(s["properties"]["isDefault"]).lower() == wanted.lower()]
            return Response(200, {"value": stores, "nextLink": None})
        store = self.datastores.get(name)
        if action == "listSecrets" and request.method == "POST":
            if store is None:
                return error(404, "UserError", f"datastore {name} not found")
            return Response(200, self.secrets[name])
        if request.method == "GET":
            return Response(200, store) if store else error(404, "UserError", f"Datastore {name} was not found")
        if request.method == "DELETE":
            if self.datastores.pop(name, None) is None:
                return Response(204)
            self.secrets.pop(name, None)
            self.deleted_datastores.append(name)
            return Response(200)
        if request.method == "PUT":
            props = request.json()["properties"]
            credentials = dict(props.get("credentials") or {})
            secret = credentials.pop("secrets", None) or {}
            self.secrets[name] = secret
            if secret.get("sasToken"):
                self.registered_tokens.append(secret["sasToken"])
            kind = secret.get("secretsType")
            self.datastores[name] = {
                "id": f"{self.arm_prefix}/datastores/{name}", "name": name, "type": f"{PROVIDER}/workspaces/datastores",
                "properties": {**props, "credentials": {**credentials, **({"secrets": {"secretsType": kind}} if kind
                                                                            else {})},
                               "isDefault": False},
                "systemData": {"createdAt": _now(), "lastModifiedAt": _now()}}
            return Response(201 if store is None else 200, self.datastores[name])
        return error(405, "MethodNotAllowed", request.method)

    def add_datastore(self, name: str, container: str, default: bool = False) -> None:
        """One of the workspace's own datastores, on its storage account, holding the account key."""
        self.datastores[name] = {
            "id": f"{self.arm_prefix}/datastores/{name}", "name": name, "type": f"{PROVIDER}/workspaces/datastores",
            "properties": {"datastoreType": "AzureBlob", "accountName": self.storage_account,
                           "containerName": container, "endpoint": "core.windows.net", "protocol": "https",
                           "credentials": {"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey"}},
                           "isDefault": default, "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity"}}
        self.secrets[name] = {"secretsType": "AccountKey", "key": self.storage[self.storage_account][1]}

    # environments and code

    def _environments(self, request: Request, name: str = "", _versions: str = "", version: str = "") -> Response:
        key = (name, version)
        if request.method == "GET":
            found = self.environments.get(key)
            return Response(200, found) if found else error(404, "UserError", f"environment {name}:{version} not found")
        if request.method == "PUT":
            props = request.json()["properties"]
            build = (props.get("build") or {}).get("contextUri")
            if not (props.get("image") or build):
                return error(400, "UserError", "an environment needs an image or a build context")
            self.environments[key] = {"id": f"{self.arm_prefix}/environments/{name}/versions/{version}",
                                      "name": version, "type": f"{PROVIDER}/workspaces/environments/versions",
                                      "properties": {**props, "provisioningState": "Succeeded"},
                                      "systemData": {"createdAt": _now()}}
            return Response(201, self.environments[key])
        return error(405, "MethodNotAllowed", request.method)

    def _codes(self, request: Request, name: str = "", _versions: str = "", version: str = "",
               action: str = "") -> Response:
        if not version:  # the list, by content hash: an unchanged snapshot is not uploaded again
            found = [c for (n, _), c in self.codes.items() if n == name
                     and c["properties"].get("properties", {}).get("hash") == request.query.get("hash")]
            return Response(200, {"value": found, "nextLink": None})
        key = (name, version)
        if action == "startPendingUpload":
            container = f"{self.id}-{uuid.uuid4().hex[:10]}"  # a temporary container per upload, like the service's
            self.runner.storage_client(self.storage_account).create_container(container)
            account_url = f"https://{self.storage_account}.blob.core.windows.net/{container}"
            return Response(200, {"pendingUploadId": uuid.uuid4().hex, "pendingUploadType": "TemporaryBlobReference",
                                  "blobReferenceForConsumption": {
                                      "blobUri": account_url, "storageAccountArmId": None,
                                      "credential": {"credentialType": "SAS",
                                                     "sasUri": f"{account_url}?{self.runner.upload_sas(container)}"}}})
        if request.method == "GET":
            found = self.codes.get(key)
            return Response(200, found) if found else error(404, "UserError", f"code {name}:{version} not found")
        if request.method == "PUT":
            self.codes[key] = {"id": f"{self.arm_prefix}/codes/{name}/versions/{version}", "name": version,
                               "type": f"{PROVIDER}/workspaces/codes/versions",
                               "properties": {**request.json()["properties"], "provisioningState": "Succeeded"},
                               "systemData": {"createdAt": _now()}}
            return Response(201, self.codes[key])
        return error(405, "MethodNotAllowed", request.method)

    # ------------------------------------------------------------------ the workspace's data plane

    def data_plane(self, request: Request) -> Response:
        if request.path == "/discovery":
            base = f"https://{DATA_PLANE}"
            return Response(200, {"api": base, "catalog": base, "experimentation": base, "gallery": base,
                                  "history": base, "hyperdrive": base, "labeling": base, "modelmanagement": base,
                                  "pipelines": base, "studio": "https://ml.azure.com"})
        details = re.fullmatch(r"/history/v1\.0/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                               rf"{PROVIDER}/workspaces/[^/]+/runs/([^/]+)(/details)?", request.path, re.I)
        if details and details.group(1) in self.jobs:
            return Response(200, self.runner.run_details(details.group(1), bool(details.group(2))))
        return error(404, "NotFound", f"data plane path {request.path}")

    # ------------------------------------------------------------------ storage (Azurite behind)

    def blob(self, request: Request) -> Response:
        """The storage accounts' front: a request with its own SAS goes on as it is, so Azurite
        checks it; one signed with the account key or an Entra ID token is checked here, then
        sent on with an account SAS (Azurite serves no Entra ID over plain HTTP)."""
        account = request.host.split(".")[0]
        if account not in self.storage:
            return Response(404, b"", {"x-ms-error-code": "AccountNotFound"})
        base, key = self.storage[account]
        query = dict(request.query)
        auth = request.headers.get("authorization", "")
        if "sig" not in query:
            if auth.startswith("Bearer "):
                token = self.tokens.get(auth.split(" ", 1)[1])
                if token is None or token.expires < time.time() or "storage" not in token.audience:
                    return Response(401, b"", {"x-ms-error-code": "InvalidAuthenticationInfo"})
            elif not auth.startswith(f"SharedKey {account}:"):
                return Response(403, b"", {"x-ms-error-code": "NoAuthenticationInformation"})
            query |= dict(_form(self.runner.account_sas(account).encode()))
        target = urlsplit(base)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in request.headers.items()
                   if k not in ("host", "authorization", "connection", "proxy-connection", "content-length",
                                "transfer-encoding")}
        if request.body or request.method in ("PUT", "POST"):
            headers["content-length"] = str(len(request.body))
        connection.request(request.method, f"{target.path}{quote(request.path)}?{urlencode(query)}", request.body,
                           headers)
        answer = connection.getresponse()
        body = answer.read()
        connection.close()
        passed = {k: v for k, v in answer.getheaders() if k.lower() not in ("transfer-encoding", "connection",
                                                                             "content-length", "keep-alive")}
        if request.method == "HEAD":
            passed["Content-Length"] = answer.getheader("content-length", "0")
        return Response(answer.status, body, passed)


def _jwt(claims: dict) -> str:
    """An unsigned token of Entra ID's shape (the SDK reads its ``tid`` for the studio link)."""
    import base64
    import json

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.c2ln"


def _form(body: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body.decode(), keep_blank_values=True)


def _versioned(arm_id: str, kind: str) -> tuple[str, str]:
    """``(name, version)`` from ``.../environments/NAME/versions/VERSION`` (or ``azureml:NAME:VERSION``)."""
    found = re.search(rf"/{kind}/([^/]+)/versions/([^/]+)$", arm_id)
    if found:
        return found.group(1), found.group(2)
    name, _, version = arm_id.removeprefix("azureml:").partition(":")
    return name, version

