"""Request and response bodies. Requests are strict: unknown fields, wrong types, NUL bytes and
non-finite numbers are refused with a 422 naming the field."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    model_validator,
)

from audit.models import JOB_MODES, JOB_STATUSES, REVIEW_STATES, VERDICTS
from gateway.urls import absolute
from policies import ACTIONS, effective_action

# the values are defined once, where they belong; `Literal[tuple]` is `Literal[a, b, ...]`
Mode = Literal[JOB_MODES]
Status = Literal[JOB_STATUSES]
Action = Literal[ACTIONS]
ReviewState = Literal[REVIEW_STATES]
Verdict = Literal[VERDICTS]


# Unicode's control characters (category Cc) but newline and tab; one regex scan on the submit path
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean_text(value: str) -> str:
    """Refuse NUL and other control characters (newline and tab stay); return the text in NFC, the form that
    is scored, hashed and stored."""
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    bad = CONTROL.search(value)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad.group()):04X})")
    return unicodedata.normalize("NFC", value)


def _not_blank(value: str) -> str:
    """Refuse text with nothing visible: only whitespace, zero-width, bidi or other format characters."""
    if not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in value):
        raise ValueError("must contain a visible character (not only whitespace or format characters)")
    return value


def _multiple_of_8(value: int | None) -> int | None:
    if value is not None and value % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE's scale), got {value}")
    return value


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host, no user:password@ and nothing parsers read differently (`\\`).
    Whether its host may be reached is the server's check (`workers.url_guard`, with its settings)."""
    if any(c.isspace() or c == "\\" for c in value):
        raise ValueError("must be an absolute http(s) URL without spaces or backslashes")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ValueError("must not carry user:password@ (webhooks are signed; put no credentials in the URL)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        raise ValueError("must have a valid port") from None
    if not parts.hostname:
        raise ValueError("must name a host")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Prompt = Annotated[str, Field(min_length=1), AfterValidator(_clean_text), AfterValidator(_not_blank)]
Side = Annotated[int, Field(ge=64, le=4096), AfterValidator(_multiple_of_8)]
LabelKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
LabelValue = Annotated[str, Field(max_length=256), AfterValidator(_clean_text)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class JobRequest(Strict):
    """A generation request. Its prompt is gated first; an accepted prompt is rendered in `mode`."""

    prompt: Prompt = Field(description="The text prompt (its limit is the server's `max_prompt_chars`).")
    negative_prompt: Annotated[Text, Field(max_length=4000)] = ""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    steps: Annotated[int, Field(ge=1, le=200)] = 25
    guidance: Annotated[float, Field(ge=0.0, le=50.0), AfterValidator(_finite)] = 7.5
    height: Side | None = Field(default=None, description="Pixels, a multiple of 8; default: the ensemble's.")
    width: Side | None = Field(default=None, description="Pixels, a multiple of 8; default: the ensemble's.")
    mode: Mode = Field(
        default="fast",
        description=(
            "fast: one image; full: one per expert path, disentangled at the first step only (the paper's "
            "Algorithm 1); score_only: no image."
        ),
    )
    callback_url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)] | None = Field(
        default=None,
        description="Signed webhooks: halted, flagged, held, review.*, completed or failed.",
    )
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=16)] = Field(
        default_factory=dict,
        description="Client metadata (group labels such as region) kept with the decision.",
    )

    def params(self) -> dict[str, Any]:
        """What the render worker needs besides the prompt."""
        return {
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
        }


class ScoreRequest(Strict):
    """Score and decide up to the server's `score_max_prompts` prompts; nothing is rendered."""

    prompts: Annotated[list[Prompt], Field(min_length=1)]
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=16)] = Field(default_factory=dict)


def _attributes(model: type[BaseModel], row: Any) -> dict[str, Any]:
    """The row's attributes named like the model's fields."""
    return {name: getattr(row, name) for name in model.model_fields if hasattr(row, name)}


def _expand(info: ValidationInfo) -> frozenset[str]:
    return (info.context or {}).get("expand", frozenset())


def scoring_summary(scoring: dict[str, Any]) -> dict[str, Any]:
    """The scoring configuration in brief: its scalar settings, and how many layers and experts the lists
    name (the full configuration is behind `?expand=scoring`)."""
    brief: dict[str, Any] = {}
    for key, value in scoring.items():
        if isinstance(value, list | tuple):
            brief[f"{key}_count"] = len(value)
        elif not isinstance(value, dict):
            brief[key] = value
    return brief


class ScoreOut(BaseModel):
    score: float = Field(description="sqrt(d) * EU: the experts' disagreement at the first denoising step.")
    eu: float
    num_experts: int
    fingerprint: str = Field(description="sha256 of the scoring configuration (seed, scheduler, steps, ...).")
    scoring: dict[str, Any] = Field(
        description="The scoring configuration in brief (lists as counts); in full with `?expand=scoring`."
    )
    expert_deviation: list[float]

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any, info: ValidationInfo) -> Any:
        """From a decision row: its scoring configuration in brief unless `scoring` is expanded."""
        if isinstance(row, dict):
            return row
        scoring = row.scoring or {}
        return {
            **_attributes(cls, row),
            "scoring": scoring if "scoring" in _expand(info) else scoring_summary(scoring),
            "expert_deviation": list(row.expert_deviation or []),
        }


class DecisionOut(BaseModel):
    action: Action
    shadow_action: Action | None
    rule: str
    flag_at: float
    halt_at: float
    reason: str
    policy_name: str
    policy_version: str
    policy_hash: str
    policy_mode: str
    decided_at: datetime
    row_hash: str

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any) -> Any:
        return row if isinstance(row, dict) else {**_attributes(cls, row), "decided_at": row.created_at}

    @computed_field(description="The threshold that fired (halt_at or flag_at); null on continue.")
    @property
    def threshold(self) -> float | None:
        return {"halt": self.halt_at, "flag": self.flag_at}.get(effective_action(self))


class ArtifactOut(BaseModel):
    index: int
    url: str
    sha256: str
    width: int
    height: int
    size_bytes: int

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any) -> Any:
        if isinstance(row, dict):
            return row
        index = row.path_index
        url = absolute(f"/v1/jobs/{row.job_id}/images/{index}")  # absolute during a request (gateway.urls)
        return {**_attributes(cls, row), "index": index, "url": url}


class JobOut(BaseModel):
    """A job as the API shows it (built from the row's attributes by `JobOut.of`)."""

    id: uuid.UUID
    status: Status
    mode: Mode
    language: str | None = Field(
        description="ISO 639-1 code of the prompt, detected at scoring (null until then, or if unsure)."
    )
    labels: dict[str, str]
    params: dict[str, Any]
    attempts: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    score: ScoreOut | None
    decision: DecisionOut | None
    review: ReviewState | None = Field(
        default=None,
        description="Where the job stands in human review; null when it was never sent to review.",
    )
    artifacts: list[ArtifactOut]

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, job: Any) -> Any:
        """A job row's attributes; its decision gives both `score` and `decision`; `params` are the
        request's (less its hash) with the negative prompt."""
        if isinstance(job, dict):
            return job
        params = {k: v for k, v in (job.params or {}).items() if k != "request_sha256"}
        params["negative_prompt"] = job.negative_prompt or ""
        return {
            **_attributes(cls, job),
            "labels": job.labels or {},
            "params": params,
            "score": job.decision,
        }

    @computed_field(
        description="True when the policy flagged the job (under `on_flag: hold` it is held for review)."
    )
    @property
    def flagged(self) -> bool:
        return self.decision is not None and self.decision.action == "flag"

    @computed_field
    @property
    def links(self) -> dict[str, str]:
        base = absolute(f"/v1/jobs/{self.id}")
        return {"self": base, "cancel": f"{base}/cancel"}

    @classmethod
    def of(cls, job: Any, expand: Iterable[str] = ()) -> JobOut:
        """The public view of a job row (`expand`: parts shown in full, e.g. `scoring`)."""
        return cls.model_validate(job, context={"expand": frozenset(expand)})


def job_out(job: Any, expand: Iterable[str] = ()) -> JobOut:
    """The public view of a job row."""
    return JobOut.of(job, expand)


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ScoreResult(BaseModel):
    job_id: uuid.UUID
    prompt_index: int
    status: Status
    language: str | None
    score: ScoreOut | None
    decision: DecisionOut | None


class ScoreResponse(BaseModel):
    results: list[ScoreResult]
    complete: bool = Field(description="False when some prompts were still waiting for a gate worker.")


class ReviewRequest(Strict):
    """A reviewer's verdict on a held (or, under `on_halt: review`, halted) job."""

    verdict: Verdict = Field(
        description="approve: release the images (a halted job is rendered); reject: never serve them; "
        "escalate: keep the job in the queue for someone else."
    )
    note: Annotated[Text, Field(max_length=4000)] | None = Field(
        default=None, description="Why (kept with the verdict; its sha256 is in the review chain)."
    )
    override: bool = Field(
        default=False,
        description="Change the verdict on a job that was already approved or rejected; needs a note.",
    )


class VerdictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from a `reviews` row

    id: int
    verdict: Verdict
    previous: ReviewState = Field(description="The job's review state before this verdict.")
    outcome: ReviewState = Field(description="The job's review state after it.")
    override: bool
    reviewer: str = Field(description="The shown prefix of the reviewer's API key.")
    note: str | None = Field(description="Null once redacted.")
    created_at: datetime
    row_hash: str = Field(description="This verdict's link in the review chain.")


class ReviewedJob(BaseModel):
    job: JobOut
    waiting_s: float = Field(description="Seconds since the job was submitted.")
    verdicts: list[VerdictOut] = Field(description="Earlier verdicts on this job, oldest first.")


class ReviewQueue(BaseModel):
    total: int = Field(description="How many jobs match (the page holds at most `limit`).")
    oldest_waiting_s: float | None
    items: list[ReviewedJob]


class ReviewResult(BaseModel):
    job: JobOut
    verdict: VerdictOut


class Problem(BaseModel):
    detail: Any
