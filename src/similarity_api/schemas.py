"""The HTTP contract: pydantic request and response models. Limits here appear in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

MAX_K = 100
DEFAULT_K = 10
MAX_BATCH = 1000
MAX_BATCH_NEIGHBOURS = 10_000
MAX_PROFILE_ITEMS = 1000
MAX_HANDLE = 2**63 - 1
MAX_SECONDS = 1e9
MAX_LABEL = 200

#: A customer id as a string: ASCII digits, 1..MAX_HANDLE, JSON whitespace around them ignored.
HANDLE_PATTERN = r"^[ \t\n\r]*0*[1-9][0-9]{0,18}[ \t\n\r]*$"
_JSON_SPACE = " \t\n\r"
# FastAPI writes schema bounds as floats: MAX_HANDLE (2**63 - 1) has no float, 2**63 has.
_HANDLE_INTEGER = {"type": "integer", "minimum": 1, "exclusiveMaximum": MAX_HANDLE + 1}


def _handle(value: Any) -> Any:
    """The one rule for a customer id, in a body and in a path: an integer, or a string of ASCII
    digits (as in the original data). No sign, no decimal point or exponent, no float (2.0 is not
    a customer id), no boolean. A digit string out of range is reported as the integer would be."""
    if isinstance(value, (bool, float)):
        raise PydanticCustomError("handle_type", "Input should be an integer or a string of digits")
    if isinstance(value, str):
        text = value.strip(_JSON_SPACE)
        if not (text.isascii() and text.isdigit()):
            raise PydanticCustomError(
                "handle_type", "Input should be an integer or a string of digits"
            )
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(MAX_HANDLE)):  # never convert a huge string
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {le}", {"le": MAX_HANDLE}
            )
        return int(digits)
    return value


UserHandle = Annotated[
    int,
    BeforeValidator(_handle),
    Field(ge=1, le=MAX_HANDLE),
    WithJsonSchema(
        {"anyOf": [dict(_HANDLE_INTEGER), {"type": "string", "pattern": HANDLE_PATTERN}]}
    ),
    Field(
        description=f"Customer id: an integer 1..{MAX_HANDLE}, or the same number as a string of "
        'digits like "1" (as in the original data). Not 2.0, "+1" or "1e3".',
        examples=[1],
    ),
]
#: The same rule in a path segment (always a string there), documented as the integer it names.
UserHandleInPath = Annotated[
    int, BeforeValidator(_handle), Field(ge=1, le=MAX_HANDLE), WithJsonSchema(dict(_HANDLE_INTEGER))
]
K = Annotated[
    int,
    Field(ge=1, le=MAX_K, strict=True, description=f"How many neighbours to return (1..{MAX_K})."),
]
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Score = Annotated[float, Field(ge=0, le=300, allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests ----------------------------------------------------------------------------------


class PredictRequest(_Request):
    """Customers most similar to a known customer."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"user_handle": 1, "k": 5}]}
    )
    user_handle: UserHandle
    k: K = DEFAULT_K


class BatchRequest(_Request):
    """Neighbours for many customers at once.

    The cost is bounded: len(user_handles) x k must be at most 10,000 neighbours (1,000 customers
    at the default k = 10, or 100 at k = 100); a larger batch is a 422 naming both fields: split it.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"user_handles": [1, 2, 3], "k": 5}]},
    )
    user_handles: list[UserHandle] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} customer ids; unknown ones are listed in `not_found`. "
        f"len(user_handles) x k is at most {MAX_BATCH_NEIGHBOURS:,}.",
    )
    k: K = DEFAULT_K

    @model_validator(mode="after")
    def _bounded_cost(self) -> Self:
        total = len(self.user_handles) * self.k
        if total > MAX_BATCH_NEIGHBOURS:
            raise PydanticCustomError(
                "batch_too_large",
                "user_handles x k = {total} is over the limit of {limit}; split the batch",
                {"total": total, "limit": MAX_BATCH_NEIGHBOURS},
            )
        return self


class ProfileRequest(_Request):
    """A described behaviour (new or anonymous customer), in the units of the input files."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "course_tags": {"python": 3600, "machine-learning": 1200},
                    "interests": ["python"],
                    "k": 5,
                }
            ]
        },
    )
    course_tags: dict[Label, Seconds] = Field(
        default_factory=dict,
        max_length=MAX_PROFILE_ITEMS,
        description="Seconds of viewing per course tag.",
    )
    courses: dict[Label, Seconds] = Field(
        default_factory=dict,
        max_length=MAX_PROFILE_ITEMS,
        description="Seconds of viewing per course id.",
    )
    interests: list[Label] = Field(
        default_factory=list, max_length=MAX_PROFILE_ITEMS, description="Followed interest tags."
    )
    assessments: dict[Label, Score] = Field(
        default_factory=dict,
        max_length=MAX_PROFILE_ITEMS,
        description="Assessment score (0..300) per assessment tag.",
    )
    k: K = DEFAULT_K


# --- responses ---------------------------------------------------------------------------------


class SharedFeature(_Response):
    feature: str = Field(description='Feature label, e.g. "tag:aws" or "course:<id>".')
    kind: Literal["course", "course_tag", "interest", "assessment"]
    contribution: float = Field(description="This feature's share of the similarity.")


class CustomerSummary(_Response):
    top_tags: list[str] = Field(description="Course tags with the most view time, most first.")
    courses_viewed: int = Field(ge=0)
    view_time_seconds: int = Field(ge=0)
    interests: int = Field(ge=0, description="Distinct interests followed.")
    assessments: int = Field(ge=0, description="Distinct assessment tags taken.")


class Neighbor(_Response):
    rank: int = Field(ge=1)
    user_handle: int
    similarity: float = Field(ge=-1.0001, le=1.0001, description="Exact cosine similarity.")
    shared: list[SharedFeature] = Field(
        description="The features that contribute most to the similarity, largest first."
    )
    remainder: float = Field(
        description="The rest of the similarity: sum(shared contributions) + remainder = similarity."
    )
    summary: CustomerSummary


class PredictResponse(_Response):
    user_handle: int
    index_version: str
    neighbors: list[Neighbor] = Field(
        description="Most similar first; never the customer themselves."
    )


class BatchResult(_Response):
    user_handle: int
    neighbors: list[Neighbor]


class BatchResponse(_Response):
    index_version: str
    results: list[BatchResult] = Field(
        description="One entry per found customer, in request order."
    )
    not_found: list[int] = Field(description="Handles the index does not know.")
    no_comparable_activity: list[int] = Field(
        description="Known handles with no comparable activity (so no neighbours)."
    )


class ProfileResponse(_Response):
    index_version: str
    neighbors: list[Neighbor]
    ignored: dict[str, list[str]] = Field(
        description="Labels the index does not know, by request field; they did not count."
    )


class UserResponse(_Response):
    user_handle: int
    index_version: str
    indexed: bool = Field(description="False when the customer has no comparable activity.")
    summary: CustomerSummary


class IndexResponse(_Response):
    index_version: str
    built_at: str
    content_sha256: str
    schema_version: int
    metric: str
    dim: int
    n_trees: int
    search_k: int
    candidates: int
    counts: dict[str, int]
    parameters: dict[str, Any]
    quality: dict[str, float]
    timings: dict[str, float]
    inputs: dict[str, dict[str, Any]]
    libraries: dict[str, str]


class ReloadResponse(_Response):
    index_version: str
    previous_version: str | None
    changed: bool


class Health(_Response):
    status: Literal["ok"]


class Ready(_Response):
    status: Literal["ready"]
    index_version: str


class ValidationIssue(BaseModel):
    loc: list[str] = Field(
        description='Where: ["body"] for the body as a whole, ["body", "<field>", ...] or '
        '["path", "<parameter>"].'
    )
    msg: str
    type: str = Field(description='Machine-readable kind, e.g. "json_invalid", "less_than_equal".')


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="URI reference naming the problem type.")
    title: str
    status: int
    detail: str
    user_handle: int | None = Field(
        None, description="The customer asked about (unknown-user, no-comparable-activity)."
    )
    index_version: str | None = Field(
        None,
        description="The index that gave this answer (unknown-user, no-comparable-activity, "
        "empty-profile), as in every successful response.",
    )
    ignored: dict[str, list[str]] | None = Field(
        None, description="Labels of an empty profile the index does not know, by request field."
    )
    limit_bytes: int | None = Field(
        None, description="The size limit that was exceeded (body-too-large, headers-too-large)."
    )
    errors: list[ValidationIssue] | None = Field(
        None, description="Each invalid part of the request (invalid-request), at most 20."
    )
