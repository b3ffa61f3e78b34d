"""The DashScope async API, as `dashscope-api.md` describes it: client, protocols, error classes."""

from workers.dashscope.client import DashScopeClient
from workers.dashscope.protocol import ResultItem, TaskState

__all__ = ["DashScopeClient", "ResultItem", "TaskState"]
