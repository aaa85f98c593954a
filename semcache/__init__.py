"""semcache: a semantic cache for LLM responses, served over gRPC."""

from semcache.client import Client, Partition

__all__ = ["Client", "Partition"]
__version__ = "0.1.0"
