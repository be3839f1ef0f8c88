"""docker/azure/azuredeploy.json, checked offline: it cannot be deployed from here.

What is checked: it parses and uses what it declares; it makes every resource docs/deploying.md
names, the containers storage.blobs needs and a Key Vault secret for every connection the code
reads; the role assignments are exactly the least-privilege set the docs give; each resource's
properties are fields of the azure-mgmt SDK's model of that resource (the SDKs are generated
from the public REST API specification), at the API version the SDK speaks. For the three types
without an SDK here (Key Vault, managed identities, role assignments) the API version is one
whose folder exists in Azure/azure-rest-api-specs (looked up when the template was written:
specification/keyvault/.../stable/2023-07-01, msi/.../stable/2023-01-31,
authorization/.../stable/2022-04-01)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from .helpers import REPO

sys.path.insert(0, str(REPO / "plugins"))

TEMPLATE = REPO / "docker" / "azure" / "azuredeploy.json"
ROLES = {"ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
         "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
         "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
         "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
         "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist"}
BROAD = {"8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner", "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor"}
# (identity, scope, role): what docs/deploying.md's identity table gives, nothing more
LEAST_PRIVILEGE = {("airflowIdentity", "dataAccount", "Storage Blob Data Contributor"),
                   ("airflowIdentity", "systemAccount", "Storage Blob Data Contributor"),
                   ("airflowIdentity", "vault", "Key Vault Secrets User"),
                   ("airflowIdentity", "workspace", "AzureML Data Scientist"),
                   ("airflowIdentity", "workspaceAccount", "Storage Blob Data Reader"),
                   ("clusterIdentity", "registry", "AcrPull")}
SPEC_VERSIONS = {"Microsoft.KeyVault/vaults": "2023-07-01", "Microsoft.KeyVault/vaults/secrets": "2023-07-01",
                 "Microsoft.ManagedIdentity/userAssignedIdentities": "2023-01-31",
                 "Microsoft.Authorization/roleAssignments": "2022-04-01"}


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _resources(template, kind: str) -> list[dict]:
    return [r for r in template["resources"] if r["type"] == kind]


def _rest_names(model) -> set[str]:
    return {field._rest_name for field in type(model())._attr_to_rest_field.values()}


def _sdk_version(configuration) -> str:
    return configuration(credential=object(), subscription_id="s").api_version


def test_it_parses_and_uses_every_parameter_and_variable(template):
    text = TEMPLATE.read_text()
    assert template["$schema"].endswith("deploymentTemplate.json#")
    for name in template["parameters"]:
        assert f"parameters('{name}')" in text, f"parameter {name} is never used"
    for name in template["variables"]:
        assert f"variables('{name}')" in text, f"variable {name} is never used"
    used = set(re.findall(r"parameters\('([^']+)'\)", text)) | set(re.findall(r"variables\('([^']+)'\)", text))
    assert used <= set(template["parameters"]) | set(template["variables"])  # nothing used undeclared
    for value in re.findall(r'"(\[[^"]*\])"', text):  # every expression's brackets and quotes balance
        assert value.count("(") == value.count(")") and value.count("'") % 2 == 0, value


def test_every_resource_the_docs_name_is_made(template):
    kinds = {r["type"] for r in template["resources"]}
    assert kinds == {"Microsoft.ManagedIdentity/userAssignedIdentities", "Microsoft.Storage/storageAccounts",
                     "Microsoft.Storage/storageAccounts/blobServices",
                     "Microsoft.Storage/storageAccounts/blobServices/containers", "Microsoft.KeyVault/vaults",
                     "Microsoft.KeyVault/vaults/secrets", "Microsoft.ContainerRegistry/registries",
                     "Microsoft.MachineLearningServices/workspaces",
                     "Microsoft.MachineLearningServices/workspaces/computes", "Microsoft.Authorization/roleAssignments"}
    accounts = {r["name"] for r in _resources(template, "Microsoft.Storage/storageAccounts")}
    assert accounts == {"[variables('dataAccount')]", "[variables('systemAccount')]",
                        "[variables('workspaceAccount')]"}
    identities = {r["name"] for r in _resources(template, "Microsoft.ManagedIdentity/userAssignedIdentities")}
    assert identities == {"[variables('airflowIdentity')]", "[variables('clusterIdentity')]"}
    docs = (REPO / "docs" / "deploying.md").read_text()
    assert "docker/azure/azuredeploy.json" in docs and "python -m deployment check" in docs


def test_the_containers_are_those_the_pipeline_needs(template):
    from storage.blobs import DATA_CONTAINERS, SYSTEM_CONTAINERS

    assert template["variables"]["dataContainers"] == list(DATA_CONTAINERS)
    assert template["variables"]["systemContainers"] == list(SYSTEM_CONTAINERS)
    made = {r["name"] for r in _resources(template, "Microsoft.Storage/storageAccounts/blobServices/containers")}
    assert made == {"[concat(variables('dataAccount'), '/default/', variables('dataContainers')[copyIndex()])]",
                    "[concat(variables('systemAccount'), '/default/', variables('systemContainers')[copyIndex()])]"}
    for account in _resources(template, "Microsoft.Storage/storageAccounts"):
        props = account["properties"]
        assert props["allowBlobPublicAccess"] is False and props["minimumTlsVersion"] == "TLS1_2"
        # users' and the pipeline's accounts take Entra ID only: no key to leak (the workspace's own
        # account keeps keys: Azure ML's default datastores use them)
        assert props["allowSharedKeyAccess"] is (account["name"] == "[variables('workspaceAccount')]")
    data_blobs = next(r for r in _resources(template, "Microsoft.Storage/storageAccounts/blobServices")
                      if "dataAccount" in r["name"])
    assert data_blobs["properties"]["deleteRetentionPolicy"]["enabled"] is True  # soft delete for videos-out


def test_roles_are_least_privilege_and_built_in(template):
    assigned = set()
    for r in _resources(template, "Microsoft.Authorization/roleAssignments"):
        role_var = re.fullmatch(r"\[variables\('roles'\)\.(\w+)\]", r["properties"]["roleDefinitionId"]).group(1)
        guid = re.search(r"'([0-9a-f-]{36})'", template["variables"]["roles"][role_var]).group(1)
        assert guid in ROLES and guid not in BROAD
        identity = re.search(r"variables\('(\w+Identity)'\)", r["properties"]["principalId"]).group(1)
        scope = re.search(r"variables\('(\w+)'\)", r["scope"]).group(1)
        assert r["properties"]["principalType"] == "ServicePrincipal"
        assigned.add((identity, scope, ROLES[guid]))
    assert assigned == LEAST_PRIVILEGE
    assert not any(guid in TEMPLATE.read_text() for guid in BROAD)


def test_properties_are_the_sdk_models_fields_at_the_version_it_speaks(template):
    from azure.ai.ml._restclient.arm_ml_service import models as ml
    from azure.ai.ml._restclient.arm_ml_service._configuration import MachineLearningServicesMgmtClientConfiguration
    from azure.mgmt.containerregistry import models as acr
    from azure.mgmt.containerregistry._configuration import ContainerRegistryManagementClientConfiguration
    from azure.mgmt.storage import models as storage
    from azure.mgmt.storage._configuration import StorageManagementClientConfiguration

    versions = {"Microsoft.Storage": _sdk_version(StorageManagementClientConfiguration),
                "Microsoft.MachineLearningServices": _sdk_version(MachineLearningServicesMgmtClientConfiguration),
                "Microsoft.ContainerRegistry": _sdk_version(ContainerRegistryManagementClientConfiguration)}
    models = {"Microsoft.Storage/storageAccounts": (storage.StorageAccountCreateParameters,
                                                    storage.StorageAccountPropertiesCreateParameters),
              "Microsoft.Storage/storageAccounts/blobServices": (storage.BlobServiceProperties,
                                                                 storage.BlobServicePropertiesProperties),
              "Microsoft.Storage/storageAccounts/blobServices/containers": (storage.BlobContainer,
                                                                            storage.ContainerProperties),
              "Microsoft.ContainerRegistry/registries": (acr.Registry, acr.RegistryProperties),
              "Microsoft.MachineLearningServices/workspaces": (ml.Workspace, ml.WorkspaceProperties),
              "Microsoft.MachineLearningServices/workspaces/computes": (ml.ComputeResource, ml.AmlCompute)}
    arm_keys = {"type", "apiVersion", "name", "dependsOn", "copy", "condition", "scope"}  # the template's own
    for resource in template["resources"]:
        kind = resource["type"]
        if kind in SPEC_VERSIONS:
            assert resource["apiVersion"] == SPEC_VERSIONS[kind], kind
            continue
        assert resource["apiVersion"] == versions[kind.split("/")[0]], kind
        envelope, properties = models[kind]
        assert set(resource) - arm_keys <= _rest_names(envelope), kind
        assert set(resource["properties"]) <= _rest_names(properties), kind
    compute = _resources(template, "Microsoft.MachineLearningServices/workspaces/computes")[0]["properties"]
    assert compute["computeType"] == "AmlCompute"
    assert set(compute["properties"]) <= _rest_names(ml.AmlComputeProperties)
    assert set(compute["properties"]["scaleSettings"]) <= _rest_names(ml.ScaleSettings)
    assert compute["properties"]["scaleSettings"]["minNodeCount"] == 0  # nothing billed while idle
    assert compute["properties"]["remoteLoginPortPublicAccess"] == "Disabled"
    assert template["parameters"]["clusterTier"]["defaultValue"] == "LowPriority"
    identity = _resources(template, "Microsoft.MachineLearningServices/workspaces/computes")[0]["identity"]
    assert identity["type"] == "UserAssigned" and "clusterIdentity" in json.dumps(identity)


def test_key_vault_holds_every_connection_the_code_reads(template):
    from pipeline.notifications import SMTP_CONN, WEBHOOK_CONN
    from storage.blobs import DATA_CONN, SYSTEM_CONN

    from aml_backend.cluster import ClusterConfig

    secrets = {r["name"]: r for r in _resources(template, "Microsoft.KeyVault/vaults/secrets")}
    names = {re.search(r"/airflow-connections-([\w-]+)'", n).group(1) for n in secrets}
    assert names == {c.replace("_", "-") for c in (DATA_CONN, SYSTEM_CONN, "azureml_default", WEBHOOK_CONN,
                                                   SMTP_CONN)}
    azureml = next(r for n, r in secrets.items() if "azureml-default" in n)["properties"]["value"]
    cluster = re.search(r"'cluster', createObject\((.*?)\)\)\)\)\]$", azureml).group(1)
    keys = [k for k in re.findall(r"'(\w+)', ", cluster) if k in {"name", "vm_size", "tier", "max_nodes", "identity"}]
    assert keys == ["name", "vm_size", "tier", "max_nodes", "identity"]
    sample = {"name": "vst-gpu", "vm_size": "Standard_NC4as_T4_v3", "tier": "low_priority", "max_nodes": 4,
              "identity": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
                          "userAssignedIdentities/vst-cluster"}
    assert ClusterConfig.from_settings(sample).identity == sample["identity"]  # the keys the code reads
    for conn in ("wasb-data", "wasb-system"):
        value = next(r for n, r in secrets.items() if conn in n)["properties"]["value"]
        assert "'managed_identity_client_id'" in value and "AccountKey" not in value
    outputs = template["outputs"]
    assert {"dataAccountUrl", "systemAccountUrl", "vaultUrl", "airflowIdentityClientId", "clusterIdentityId",
            "workspaceName", "clusterName", "secretsBackendKwargs"} <= set(outputs)
