"""The demo municipality: a synthetic source database (and a large copy of it for benchmarks)."""
