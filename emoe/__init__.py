"""EMoE core: load a SegMoE ensemble, score prompts at the first denoising step, generate (Fast and full EMoE)."""
