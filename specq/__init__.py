"""specq's command line and operations: ``specq`` (cli), bench, demo, status.

Beside ``tasks`` (the queue contract) and ``workers`` (what runs inside a worker). Importing
this package is cheap; each command imports what it needs when it runs.
"""
from workers import __version__

__all__ = ["__version__"]
