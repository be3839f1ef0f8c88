"""What an operator sees of the product besides Airflow's own pages: the product's metrics
(``metrics``), a run's live progress (``progress``) and the price of a run before its wait
(``estimate``).

Imports only ``storage`` of ours (and ``scoring.gpus``, plain data): every task and the Azure
ML trigger may use it, on any worker.
"""
