"""Pure decision logic: policy files, decide(), calibration and replay. No torch, no SQL, no HTTP."""
