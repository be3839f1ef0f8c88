"""The media side: ffmpeg (probe, decode, encode, mux), segments and their plan, split,
stitch, pictures, sample clips, atomic files and the one-line user error.

No module here imports torch or ``scoring.networks``, not even inside a function: the
``default`` queue's worker has no torch (tests/test_light_worker.py checks it).
"""
