"""What runs inside a specq worker: readers, pipelines, the engine and the result store.

Importing this package is cheap: torch, astropy and astroNN load only in the
modules that need them.
"""

__version__ = "0.1.0"
