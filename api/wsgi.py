"""WSGI entry point: ``gunicorn api.wsgi:app``. The only API module that builds at import."""

from api.app import create_app
from shared.config import Settings
from shared.logging import configure_logging

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
