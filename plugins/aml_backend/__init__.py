"""Azure ML backend of the score step: hook, entities, SAS, operator, trigger, extra link.

Import the parts from their modules (``from aml_backend.operators import AzureMLScoreOperator``);
nothing at package level imports the Azure ML SDK, so DAG files that use the operator parse
fast. Airflow's plugin loader imports every ``.py`` under ``plugins/`` as a loose module,
which breaks this package's relative imports: ``.airflowignore`` keeps it out, and
``plugins/airflow_plugins.py`` registers the extra link.
"""
