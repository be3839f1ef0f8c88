"""The upload path: the inbox watcher's sensor, taking an upload in (claim it into
``accepted``, start its run), the hourly sweep and backfills (``inbox``), and the run settings
every way in shares: the DAG's Params, blob metadata, the defaults Variable (``settings``).

May import ``storage``, ``pipeline.tasks`` (to quarantine) and ``aml_backend.cluster``; never
torch or the Azure ML SDK, which DAG files would otherwise load at parse time.
"""
