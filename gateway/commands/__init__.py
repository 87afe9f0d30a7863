"""One module of CLI commands per area; `gateway.cli` registers them all."""
