"""Azure ML backend of the score step: hook, entities, SAS, operator, trigger, extra link.

Import the parts from their modules (``from azureml.operators import AzureMLScoreOperator``);
nothing here imports the Azure ML SDK, so DAG files that use the operator parse fast.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from .links import AzureMLJobLink


class AzureMLPlugin(AirflowPlugin):
    """Registers the extra link, so the UI can show "Azure ML job" on the score task."""

    name = "azureml"
    operator_extra_links: ClassVar[list] = [AzureMLJobLink()]
