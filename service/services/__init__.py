"""Use cases: each takes a command and a unit of work and owns the transaction."""
