"""The Celery tasks and what they stand on: DashScope client, job store, storage, events."""
