"""The job store: jobs, batches, the due index, events and every change of status."""

from workers.jobstore.redis_store import Applied, BatchSummary, JobStore, NewJob

__all__ = ["Applied", "BatchSummary", "JobStore", "NewJob"]
