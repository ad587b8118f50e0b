"""The broker side both the API and the workers stand on: queue and task names, the Celery app, the dispatcher.

The API and the CLI publish work through :class:`broker.dispatch.Dispatcher`; the
workers consume it from the queues :mod:`broker.queues` names. Neither side
imports the other (tests/unit/test_architecture.py).
"""
