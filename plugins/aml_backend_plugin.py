"""Registers the Azure ML extra link ("Azure ML job") with Airflow's plugin manager."""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from aml_backend.links import AzureMLJobLink


class AzureMLPlugin(AirflowPlugin):
    name = "aml_backend"
    operator_extra_links: ClassVar[list] = [AzureMLJobLink()]
