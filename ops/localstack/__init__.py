"""The local stack without Docker: embedded Redis, an S3 server, the simulator, and Celery workers."""

from ops.localstack.process import StackError
from ops.localstack.stack import LocalStack, child_env, isolated_settings

__all__ = ["LocalStack", "StackError", "child_env", "isolated_settings"]
