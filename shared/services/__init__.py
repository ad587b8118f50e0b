"""Business rules: plain functions taking a session and data, free of Flask and Celery."""
