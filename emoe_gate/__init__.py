"""emoe-gate for the programs that embed it.

- `Client` / `AsyncClient`: the HTTP API on httpx (no torch is imported).
- `emoe_gate.gate`: the gate in process, for Python pipelines (`Gate`, `load_gate`, a diffusers
  `callback_on_step_end`); torch and the EMoE core load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from emoe_gate.client import AsyncClient, Client
from emoe_gate.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EmoeGateError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    ValidationError,
)
from emoe_gate.types import BulkResult, Job, JobPage, Lease, ReviewQueue, ReviewResult, ScoreResponse

if TYPE_CHECKING:
    from emoe_gate import gate as gate

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BulkResult",
    "Client",
    "ConflictError",
    "EmoeGateError",
    "Job",
    "JobPage",
    "Lease",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReviewQueue",
    "ReviewResult",
    "ScoreResponse",
    "ServiceUnavailableError",
    "ValidationError",
    "gate",
]


def __getattr__(name: str) -> Any:
    if name == "gate":
        return import_module("emoe_gate.gate")
    raise AttributeError(f"module 'emoe_gate' has no attribute {name!r}")
