"""Video style transfer: probe, split, score (MPI), stitch. No Airflow, no Azure ML here.

This package is what runs on the scoring nodes; see ``python -m scoring --help``.
"""
