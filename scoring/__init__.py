"""Video style transfer: probe, split, score (MPI), stitch. No Airflow, no Azure ML here.

This package is what runs on the scoring nodes; see ``python -m scoring --help``. It has two
sides, and the folders say which is which:

* ``media/``: ffmpeg, segments, split, stitch, pictures, sample clips, files, errors. numpy and
  Pillow at most, never torch: the light Airflow worker (queue ``default``) runs it.
* ``networks/``: the style networks and what runs them (stylizer, temporal smoothing, the MPI
  ``score`` step, the preview, device choice). torch lives here and nowhere else.

On top: ``cli.py`` (the commands, importing the network side only inside the commands that
need it), ``launch.py`` (how a step is started) and ``gpus.py`` (the Azure GPU VM sizes),
which the Airflow side reads without torch. ``media/`` never imports ``networks/``.
"""
