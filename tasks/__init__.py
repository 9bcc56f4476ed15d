"""The specq queue contract: settings, spectrum references, the Celery app and producers.

Importing ``tasks`` loads neither torch nor astroNN: producers stay light.
"""

from tasks.app import app  # noqa: E402  (`celery -A tasks` finds the app here)
from tasks.producer import Submission, submit  # noqa: E402
from workers.refs import SpectrumRef  # noqa: E402

__all__ = ["app", "submit", "Submission", "SpectrumRef"]
