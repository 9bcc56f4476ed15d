"""The specq queue contract: the Celery app, producers, the worker's lifecycle and the embedded broker.

Importing ``tasks`` loads neither torch nor astroNN, reads no environment and builds no
app: ``tasks.app`` is the process's Celery app (:func:`tasks.app.get_app`), built when
first named, which is how ``celery -A tasks worker`` finds it.
"""
import sys
import types

__all__ = ["app", "submit", "Submission", "SpectrumRef"]


class _Package(types.ModuleType):
    @property
    def app(self):
        from tasks.app import get_app

        return get_app()

    @app.setter
    def app(self, value):
        # The import system binds the submodule ``tasks.app`` here once it is imported; the
        # name stays the app's (``from tasks.app import configure`` still finds the module).
        if not isinstance(value, types.ModuleType):
            raise AttributeError("tasks.app is the process's Celery app: reconfigure it with tasks.app.configure")


def __getattr__(name: str):
    if name in ("submit", "Submission"):
        from tasks import producer

        return getattr(producer, name)
    if name == "SpectrumRef":
        from workers.refs import SpectrumRef

        return SpectrumRef
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
