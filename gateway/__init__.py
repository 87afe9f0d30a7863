"""HTTP gateway (FastAPI), dashboard pages and the CLI entry point. Must not import torch at import time."""
