"""The run's before/after preview in the Airflow UI: the task that makes it, its extra link,
and the page behind the link.

The task is a small operator (not ``@task``) because extra links belong to operator
classes. Airflow 3 stores an extra link's URL in XCom when the task ends, so the URL must
hold no credential: it points at ``/style-previews/image`` on Airflow's own API server,
which checks that the caller may read the DAG's runs (the UI's session cookie or a bearer
token), looks the run's preview up in XCom and streams it from videos-out.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from airflow.providers.common.compat.sdk import BaseOperator, BaseOperatorLink, XCom

URL_PREFIX = "/style-previews"
TASK_ID = "preview"


class PreviewLink(BaseOperatorLink):
    name = "Preview"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.configuration import conf

        if not (XCom.get_value(key="return_value", ti_key=ti_key) or {}).get("preview_blob"):
            return ""
        query = urlencode({"dag_id": ti_key.dag_id, "run_id": ti_key.run_id})
        return f"{conf.get('api', 'base_url').rstrip('/')}{URL_PREFIX}/image?{query}"


class PreviewOperator(BaseOperator):
    """Publishes ``<output>.preview.jpg`` (see ``pipeline.tasks.preview``) from probe's facts."""

    operator_extra_links = (PreviewLink(),)
    template_fields = ("probed",)

    def __init__(self, *, probed, **kwargs):
        super().__init__(**{"task_id": TASK_ID} | kwargs)
        self.probed = probed

    def execute(self, context) -> dict:
        from pipeline import tasks

        return tasks.preview(dict(context["params"]), self.probed, context["run_id"])


def build_app():
    """The API server's page for a run's preview (FastAPI, built on the first request)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Response

    app = FastAPI(title="Style transfer previews")

    @app.get("/image", dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))])
    def image(dag_id: str, run_id: str) -> Response:
        blob = preview_blob(dag_id, run_id)
        if not blob:
            raise HTTPException(404, f"run {run_id} of {dag_id} has no preview")
        from storage.blobs import DATA_CONN, OUTPUTS, BlobStore

        data = BlobStore(DATA_CONN).client.get_blob_client(OUTPUTS, blob).download_blob().readall()
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    return app


def preview_blob(dag_id: str, run_id: str) -> str | None:
    """The preview's blob name, as the run's preview task returned it."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(XComModel.get_many(key="return_value", run_id=run_id, dag_ids=dag_id,
                                                 task_ids=TASK_ID).with_only_columns(XComModel.value)).first()
    value = row[0] if row else None
    value = json.loads(value) if isinstance(value, (str, bytes)) else value
    return value.get("preview_blob") if isinstance(value, dict) else None


class LazyApp:
    """An ASGI app that builds the real one on its first request, so that the scheduler and
    workers, which load every plugin too, never import the API server's modules."""

    def __init__(self, build):
        self.build, self.app = build, None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            self.app = self.build()
        await self.app(scope, receive, send)
