"""Settings, model catalogue and Celery wiring. Imports nothing of workers/ or producer/."""
