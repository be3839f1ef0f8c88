"""The bodies of the ``video_style_transfer`` tasks (``tasks``), the preview operator, its
link and page (``preview``), notifications (``notifications``) and housekeeping of old work
(``leftovers``).

May import ``storage``, ``intake.settings`` (the rules of a run's settings) and the torch-free
side of ``scoring`` (``scoring.media``, ``scoring.launch``, ``scoring.options``); the network
side runs only as a ``python -m scoring`` child process, so the ``default`` queue's worker
needs no torch.
"""
