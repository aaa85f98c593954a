"""semcache: a semantic cache for LLM responses, served over gRPC."""

from semcache_server.client import Client, Partition, request_key

__all__ = ["Client", "Partition", "request_key"]
__version__ = "0.1.0"
