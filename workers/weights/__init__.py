"""Model weights: their published formats, manifests, installing and verifying.

A pipeline's published weights come as ten ``model_chunk_*`` files or one ``.pt``
(:mod:`~workers.weights.formats`, which also loads them with torch and writes the seeded
demo weights). A manifest says what the published files are
(:mod:`~workers.weights.manifest`); ``specq weights install`` checks a copy against it and
copies it into the weights folder (``SPECQ_WEIGHTS_DIR``) with an install record
(:mod:`~workers.weights.install`); ``verify`` checks again, and a worker checks before it
takes work (:mod:`~workers.weights.verify`). Both compare what is on disk through
:mod:`~workers.weights.inspection`.

A file is

* **published** when it matches the identities the manifest records;
* **unverified** when the manifest records none for it (AstroNN's ``.pt``), or the install
  was asked to accept weights that are not the published ones: its sha256 is recorded on
  install and checked against from then on;
* **demo** for the seeded random weights (``DEMO_WEIGHTS`` marker), never installed.

Only :mod:`~workers.weights.formats` imports torch, inside the functions that need it: the
other modules read bytes and hash them, so producers, the command line and a Celery
worker's parent process can use them.
"""
