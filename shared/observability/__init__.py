"""Operations: request ids in log lines, the JSON log format and Prometheus metrics (docs/operations.md)."""
