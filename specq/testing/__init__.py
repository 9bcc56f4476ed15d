"""What demo, bench and the tests share: SDSS-format synthetic files and formula weights.

Not imported by production code paths: readers and pipelines never depend on it.
"""
