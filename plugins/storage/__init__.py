"""Where the pipeline keeps things: the two storage accounts and their containers (``blobs``)
and a worker's local scratch folder (``scratch``).

Imports nothing of ours: every other package builds on it.
"""
