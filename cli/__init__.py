"""One module of CLI commands per area; `cli.main` registers them all."""
