"""The null model: a real pipeline whose network costs nothing.

It takes the same spectra, writes rows of the same width and goes through the same queue,
engine and store as BossNet and AstroNN, but its "network" returns correctly shaped zeros
at once. ``specq bench --feed`` and the tests run it to measure and exercise everything
around a network: listing, reading, batching, the host-side packing of a batch, rows,
writes and message handling.

Two pipelines, one per instrument: ``null_boss`` (BossNet's fields) and ``null_apogee``
(AstroNN's). They are not built in: a process opts in with
``SPECQ_PLUGINS=workers.null.spec`` (the feed bench does it for its workers).
"""
