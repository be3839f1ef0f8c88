"""The network side: the style networks as torch modules (``layers``, ``models``,
``arbitrary``), what runs them over frames (``stylizer``, ``temporal``, ``score``, ``preview``,
``images``), where a rank runs (``devices``) and the flicker measure.

Everything here may import torch and the media side; nothing outside imports this package
except the commands in ``scoring/cli.py``, inside the commands that need it.
"""
