"""The reference ensemble: a captioned shapes world, its shared parts, four experts, experiments."""
