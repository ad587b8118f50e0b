"""Worker entry module: ``celery -A workers.main worker`` (and ``beat``).

The only worker-side module that builds anything at import: the Celery app from
the environment's settings.
"""

from celery.signals import worker_process_shutdown

from shared import crypto
from shared.config import Settings
from shared.logging import configure_logging
from workers.celery_app import make_celery
from workers.runtime import close_runtimes

settings = Settings.from_env()
configure_logging(settings.log_level)
crypto.configure(settings)  # fail at boot, not at the first task, when keys are missing
app = make_celery(settings)
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@worker_process_shutdown.connect
def _close_vendor_connections(**_kwargs) -> None:
    close_runtimes()
