"""The upload path: the inbox watcher's sensor, taking an upload in (claim it into
``accepted``, start its run), the hourly sweep and backfills (``inbox``), the record of what
was taken in, hour by hour, that they read (``ledger``), and the run settings every way in
shares: the DAG's Params and the rules beyond them, blob metadata, the defaults Variable
(``settings``).

May import ``storage``, ``pipeline.tasks`` (to quarantine, to check a style picture or model),
``aml_backend.cluster`` and ``scoring.options``; never torch or the Azure ML SDK, which DAG
files would otherwise load at parse time.
"""
