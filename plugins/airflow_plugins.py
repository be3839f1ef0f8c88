"""What Airflow's plugin manager loads from this folder: the preview's link and page, and the
Azure ML job link. Everything else here is a package that the loader skips (.airflowignore)
and that tasks and DAG files import by name."""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from aml_backend.links import AzureMLJobLink
from pipeline.preview import URL_PREFIX, LazyApp, PreviewLink, build_app


class PreviewPlugin(AirflowPlugin):
    name = "style_preview"
    operator_extra_links: ClassVar[list] = [PreviewLink()]
    fastapi_apps: ClassVar[list] = [{"app": LazyApp(build_app), "url_prefix": URL_PREFIX, "name": "Style previews"}]


class AzureMLPlugin(AirflowPlugin):
    name = "aml_backend"
    operator_extra_links: ClassVar[list] = [AzureMLJobLink()]
