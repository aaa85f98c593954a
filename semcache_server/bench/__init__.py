"""Benchmark harness behind `semcache bench`: accuracy on labeled data, tuning, load."""
