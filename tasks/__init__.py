"""The specq queue contract: settings, spectrum references, the Celery app and producers.

Importing ``tasks`` loads neither torch nor astroNN: producers stay light.
"""
