"""The append-only, hash-chained SQL audit log: models, sessions, repository functions, fairness statistics."""
