"""The append-only, hash-chained SQL audit log: models, sessions, repositories, fairness statistics."""
