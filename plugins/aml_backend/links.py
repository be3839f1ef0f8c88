"""The task's extra link: the Azure ML job in the studio, from the URL the operator pushed to XCom."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

STUDIO_URL_KEY = "studio_url"
JOB_NAME_KEY = "job_name"


class AzureMLJobLink(BaseOperatorLink):
    """Opens the task's latest Azure ML job (after a resubmission: the newest one)."""

    name = "Azure ML job"

    def get_link(self, operator, *, ti_key) -> str:
        return XCom.get_value(key=STUDIO_URL_KEY, ti_key=ti_key) or ""


def studio_url(job_name: str, subscription_id: str, resource_group: str, workspace_name: str) -> str:
    """The studio page of a job, for when the service's entity carries none."""
    return (f"https://ml.azure.com/runs/{job_name}?wsid=/subscriptions/{subscription_id}"
            f"/resourcegroups/{resource_group}/workspaces/{workspace_name}")
