"""The shared backend: one cache on Redis Cluster, served by many stateless frontends.

See storage.py for the design: Redis holds every entry and counter; each frontend keeps
a FAISS replica of the partitions it serves, kept current by each partition's change log.
"""
