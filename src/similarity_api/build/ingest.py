"""Ingest: read the four activity files with polars and validate every row.

Every column is read as text first, then parsed here, so that a bad value becomes a counted,
reported rejection (file, line, reason, field, value) instead of a silent null or a crash.
Rows read = rows accepted + rows rejected, per file, always.

What each dirty case means (also in the README):

* views: a row must have a user_handle >= 1, a ``YYYY-MM-DD`` view_date, a course_id that
  course_tags knows, and a view_time_seconds in [0, 86400] (fractions allowed). An exact duplicate
  row is an export artefact and is rejected; two different rows for the same customer, course and
  day are both kept and their seconds add up (a repeated day of viewing is more view time).
* course_tags: an empty tag keeps the course known (its views count at course level) but gives it
  no tag; the row is reported as ``empty_tag``. A repeated (course, tag) row is a duplicate.
* interests: a duplicate follow is not a second interest: exact duplicate rows are rejected, and a
  tag followed again on another date is kept as a row but counts once in the features.
* assessments: the score must be an integer in [0, 300]; repeated attempts at one tag are kept and
  the best score counts.

Text is normalised before use: surrounding spaces are stripped and tags are lower-cased.
Bytes that are not UTF-8 are decoded leniently and the row is rejected as ``invalid_utf8``.

A row with more fields than the header is misaligned, so none of its values can be trusted: it is
rejected as ``extra_fields``. Extra fields that are all empty (a trailing comma, ``""``) carry
nothing and are ignored. A row so wide that it has more than twice the header's fields, or a quote that is
never closed, cannot be read as rows at all: the build stops with an error naming file and line.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from similarity_api.errors import BuildError, InputError

logger = logging.getLogger(__name__)

VIEWS = "user_course_views.csv"
COURSE_TAGS = "course_tags.csv"
INTERESTS = "user_interests.csv"
ASSESSMENTS = "user_assessment_scores.csv"

#: Columns each file must have (extra columns are allowed and ignored).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    VIEWS: ("user_handle", "view_date", "course_id", "view_time_seconds"),
    COURSE_TAGS: ("course_id", "course_tags"),
    INTERESTS: ("user_handle", "interest_tag", "date_followed"),
    ASSESSMENTS: ("user_handle", "assessment_tag", "user_assessment_date", "user_assessment_score"),
}
REQUIRED_FILES = (VIEWS, COURSE_TAGS)
OPTIONAL_FILES = (INTERESTS, ASSESSMENTS)

MAX_VIEW_SECONDS = 86_400.0
#: How much of a wrong header an error message quotes.
HEADER_SHOWN = 200
MAX_SCORE = 300
DATE_FORMAT = "%Y-%m-%d"
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "reason": pl.String(),
    "field": pl.String(),
    "value": pl.String(),
}


@dataclass(frozen=True)
class FileReport:
    """What happened to one input file."""

    name: str
    present: bool
    sha256: str = ""
    bytes: int = 0
    rows_read: int = 0
    rows_accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Tables:
    """Validated, typed input tables plus everything that was rejected."""

    views: pl.DataFrame  # user_handle i64, view_date date, course_id, view_time_seconds f64
    course_tags: pl.DataFrame  # course_id, tag str (non-empty, unique pairs), sorted
    courses: pl.DataFrame  # course_id: every known course, tagged or not, sorted
    interests: pl.DataFrame  # user_handle i64, tag, date_followed datetime
    # ``course_id`` is ``course_type`` in all three, and the interests' ``tag`` an Enum of the tags
    # followed: 2 or 4 bytes a row instead of the text (gigabytes at a million customers).
    assessments: pl.DataFrame  # user_handle i64, tag str, date datetime, score i64
    rejects: pl.DataFrame  # REJECT_SCHEMA, sorted by file then line
    files: tuple[FileReport, ...]

    @property
    def course_type(self) -> pl.Enum:
        """The Enum of every known course id, in sorted order."""
        dtype = self.courses.schema["course_id"]
        assert isinstance(dtype, pl.Enum)
        return dtype


@dataclass(frozen=True)
class _Rule:
    reason: str
    field: str
    bad: pl.Expr  # true where the row breaks the rule
    value: pl.Expr | None = None  # what the rejects report shows; default: the field's text


#: The spare columns a scan declares after the header's: a row's fields beyond the header.
SPARE = r"^_+spare_\d+$"
#: The prefix of the stripped copy ``_scan`` adds of each column it reads (see ``_text``).
_STRIPPED = "__stripped__"
#: How rejects.csv names the field of an ``extra_fields`` row.
EXTRA_FIELD = "(beyond the header)"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _scan(path: Path, columns: Sequence[str]) -> pl.LazyFrame:
    """Scan a CSV with every column as text, after checking the file and its header.

    The frame has ``columns``, ``line`` (the header is line 1), ``file`` and the ``SPARE``
    columns: the scan declares as many spare columns after the header's as the header has, so a row
    with more fields than the header shows them there instead of being cut short. A row wider than
    that is a parse error, but only when every column is read: see ``_STRICT``.
    """
    name = path.name
    if not path.is_file():
        raise InputError(f"{path}: required file is missing")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (expected a header line: {', '.join(columns)})")
    try:
        header = pl.read_csv(path, n_rows=0, infer_schema=False, encoding="utf8-lossy").columns
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as CSV: {exc}") from exc
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        shown = ", ".join(header) or "nothing"
        if len(shown) > HEADER_SHOWN:  # e.g. a file with no line ends read as one huge header
            shown = f"{shown[:HEADER_SHOWN]}… ({len(shown):,} characters)"
        raise InputError(f"{path}: missing column {missing[0]!r} (header has: {shown})")
    spare = [f"_spare_{i}" for i in range(len(header))]
    while set(spare) & set(header):
        spare = [f"_{s}" for s in spare]
    return (
        pl.scan_csv(
            path,
            has_header=False,
            skip_rows=1,
            schema=dict.fromkeys([*header, *spare], pl.String()),
            missing_columns="insert",
            encoding="utf8-lossy",
            truncate_ragged_lines=False,
        )
        .select(*columns, *spare)
        .with_row_index("line", offset=2)
        .with_columns(
            pl.col("line").cast(pl.Int64),
            pl.lit(name).alias("file"),
            # Each column stripped once, for every rule and parse to share (``_text``): written
            # inline, the same strip ran once per rule, a quarter of the validation time.
            *(pl.col(c).str.strip_chars().alias(_STRIPPED + c) for c in columns),
        )
    )


#: Reading every column of the file, not only the ones used, is what makes polars check that no
#: row has more fields than the scan declares (with projection pushdown it stops at the last
#: column it needs and silently ignores the rest of the row). Used by the one pass over each file.
_STRICT = pl.QueryOptFlags(projection_pushdown=False)


def _has_extra_fields() -> pl.Expr:
    """True where a row has a non-empty field beyond the header (empty ones carry nothing)."""
    return pl.any_horizontal(pl.col(SPARE).fill_null("") != "")


def _extra_rule() -> _Rule:
    """A row with more (non-empty) fields than the header: misaligned, so nothing in it is used."""
    extra = pl.concat_str(pl.col(SPARE).fill_null(""), separator=",").str.strip_chars_end(",")
    return _Rule("extra_fields", EXTRA_FIELD, _has_extra_fields(), extra)


def _locate_parse_error(path: Path) -> tuple[int, str] | None:
    """Find the line (physical, where the record starts) that polars could not parse, and why.

    Only runs after polars has failed on the file, so a slow pure-Python pass is fine here.
    """
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, strict=True)
        width = 0
        start = 1
        try:
            for record in reader:
                if not width:
                    width = len(record)
                elif len(record) > 2 * width:
                    return start, (
                        f"the row has {len(record)} fields, the header {width}: too many to read "
                        "as a rejected row"
                    )
                start = reader.line_num + 1
        except csv.Error as exc:
            if "unexpected end of data" in str(exc) or "field larger than field limit" in str(exc):
                return start, "a quoted field is never closed"
            return start, f"malformed quoting ({exc})"
    return None


@contextlib.contextmanager
def _parsing(path: Path) -> Iterator[None]:
    """Turn a polars parse error on ``path`` into one InputError line naming file and line."""
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        where = _locate_parse_error(path)
        if where is not None:
            line, problem = where
            raise InputError(f"{path}: could not parse input at line {line}: {problem}") from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: could not parse input: {first[:200]}") from exc


def _text(column: str) -> pl.Expr:
    """The column's text without surrounding spaces (computed once per row by ``_scan``)."""
    return pl.col(_STRIPPED + column)


def _handle(column: str = "user_handle") -> pl.Expr:
    return _text(column).cast(pl.Int64, strict=False)


def _handle_rules(column: str = "user_handle") -> list[_Rule]:
    raw = pl.col(column)
    return [
        _Rule("missing_user_handle", column, raw.is_null() | (_text(column) == "")),
        _Rule("bad_user_handle", column, _handle(column).is_null() | (_handle(column) < 1)),
    ]


def _utf8_rule(columns: Sequence[str]) -> _Rule:
    bad = pl.any_horizontal([pl.col(c).str.contains("\ufffd", literal=True) for c in columns])
    return _Rule("invalid_utf8", ",".join(columns), bad.fill_null(False))


def _validate(
    lf: pl.LazyFrame, rules: Sequence[_Rule], parsed: dict[str, pl.Expr], dedupe_on: Sequence[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply ``rules`` in order (first broken rule wins), parse, then reject exact duplicates.

    Returns (accepted rows with the ``parsed`` columns, rejects in REJECT_SCHEMA).

    Almost every row is valid, so the work is split for speed and memory: one streaming pass keeps,
    per row, its line, whether any rule is broken, and the parsed values (the raw text of the whole
    file is never held); only the broken lines are then looked at again to name the first broken
    rule, its field and the offending value.
    """
    if not rules:
        raise ValueError("at least one rule is needed")
    broken = pl.any_horizontal([r.bad.fill_null(True) for r in rules])
    frame = lf.select("line", broken.alias("_broken"), **parsed).collect(
        engine="streaming", optimizations=_STRICT
    )
    bad_lines = frame.filter(pl.col("_broken")).get_column("line")
    valid = frame.filter(~pl.col("_broken")).drop("_broken")
    del frame

    parts = []
    if bad_lines.len():
        # The first broken rule names the row's reason and field.
        reason = pl.coalesce([pl.when(r.bad.fill_null(True)).then(pl.lit(r.reason)) for r in rules])
        fld = pl.coalesce([pl.when(r.bad.fill_null(True)).then(pl.lit(r.field)) for r in rules])
        value = pl.lit(None, dtype=pl.String)
        for rule in rules:
            shown = pl.col(rule.field.split(",")[0]) if rule.value is None else rule.value
            value = pl.when(pl.col("_field") == rule.field).then(shown).otherwise(value)
        parts.append(
            lf.filter(pl.col("line").is_in(bad_lines.implode()))
            .with_columns(reason.alias("_reason"), fld.alias("_field"))
            .with_columns(value.alias("_value"))
            .select("file", "line", "_reason", "_field", "_value")
            .collect(engine="streaming")
        )

    # Exact duplicates are judged on the parsed values of valid rows: the first copy is kept. Only
    # rows whose hash repeats can be copies, so the exact comparison runs on those alone.
    key = pl.struct(list(dedupe_on))
    duplicate = np.zeros(valid.height, dtype=bool)
    maybe = np.flatnonzero(valid.select(key.hash().is_duplicated()).to_series().to_numpy())
    if maybe.size:
        repeated = valid[maybe].select(~key.is_first_distinct()).to_series().to_numpy()
        duplicate[maybe[repeated]] = True
    if duplicate.any():
        file = lf.select("file").head(1).collect().item()
        parts.append(
            valid.filter(pl.Series(duplicate)).select(
                pl.lit(file).alias("file"),
                "line",
                pl.lit("duplicate_row").alias("_reason"),
                pl.lit(",".join(dedupe_on)).alias("_field"),
                pl.concat_str([pl.col(c).cast(pl.String) for c in dedupe_on], separator=",").alias(
                    "_value"
                ),
            )
        )
    schema = pl.Schema(
        {
            "file": pl.String(),
            "line": pl.Int64(),
            "_reason": pl.String(),
            "_field": pl.String(),
            "_value": pl.String(),
        }
    )
    rejects = (
        pl.concat([p.cast(schema) for p in parts]).sort("line")
        if parts
        else pl.DataFrame(schema=schema)
    ).select(
        "file",
        "line",
        pl.col("_reason").alias("reason"),
        pl.col("_field").alias("field"),
        pl.col("_value").alias("value"),
    )
    accepted = valid.filter(~pl.Series(duplicate)).select(list(parsed))
    return accepted, rejects


def _report(
    path: Path, started: float, accepted: pl.DataFrame, rejects: pl.DataFrame
) -> FileReport:
    counts = rejects.group_by("reason").len().sort("reason")
    rejected = {str(r): int(n) for r, n in counts.iter_rows()}
    report = FileReport(
        name=path.name,
        present=True,
        sha256=_sha256(path),
        bytes=path.stat().st_size,
        rows_read=accepted.height + rejects.height,
        rows_accepted=accepted.height,
        rejected=rejected,
        seconds=round(time.perf_counter() - started, 3),
    )
    detail = ", ".join(f"{k} {v:,}" for k, v in rejected.items()) or "none"
    logger.info(
        "ingest %-28s %10s rows read, %10s accepted, rejected: %s (%.1f s)",
        path.name,
        f"{report.rows_read:,}",
        f"{report.rows_accepted:,}",
        detail,
        report.seconds,
    )
    return report


def _read_course_tags(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, FileReport]:
    started = time.perf_counter()
    lf = _scan(path, REQUIRED_COLUMNS[COURSE_TAGS])
    rules = [
        _extra_rule(),
        _utf8_rule(["course_id", "course_tags"]),
        _Rule("missing_course_id", "course_id", _text("course_id").fill_null("") == ""),
        _Rule("empty_tag", "course_tags", _text("course_tags").fill_null("") == ""),
    ]
    parsed = {"course_id": _text("course_id"), "tag": _text("course_tags").str.to_lowercase()}
    accepted, rejects = _validate(lf, rules, parsed, dedupe_on=["course_id", "tag"])
    # A course whose only row has an empty tag is still a known course.
    untagged = (
        lf.filter((_text("course_tags").fill_null("") == "") & ~_has_extra_fields())
        .select(_text("course_id").alias("course_id"))
        .filter(pl.col("course_id").fill_null("") != "")
        .filter(~pl.col("course_id").str.contains("\ufffd", literal=True))
        .collect()
    )
    courses = pl.concat([accepted.select("course_id"), untagged]).unique().sort("course_id")
    course_type = pl.Enum(courses.get_column("course_id"))
    return (
        accepted.sort("course_id", "tag").with_columns(pl.col("course_id").cast(course_type)),
        courses.with_columns(pl.col("course_id").cast(course_type)),
        rejects,
        _report(path, started, accepted, rejects),
    )


def _read_views(path: Path, courses: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, FileReport]:
    started = time.perf_counter()
    lf = _scan(path, REQUIRED_COLUMNS[VIEWS])
    seconds = _text("view_time_seconds").cast(pl.Float64, strict=False)
    date = _text("view_date").str.strptime(pl.Date, DATE_FORMAT, strict=False)
    course = _text("course_id").cast(courses.schema["course_id"], strict=False)
    known = course.is_not_null()
    rules = [
        _extra_rule(),
        _utf8_rule(["user_handle", "view_date", "course_id", "view_time_seconds"]),
        *_handle_rules(),
        _Rule("missing_course_id", "course_id", _text("course_id").fill_null("") == ""),
        _Rule("unknown_course", "course_id", ~known),
        _Rule("bad_date", "view_date", date.is_null()),
        _Rule("bad_view_time", "view_time_seconds", seconds.is_null() | ~seconds.is_finite()),
        _Rule("negative_view_time", "view_time_seconds", seconds < 0),
        _Rule("view_time_over_a_day", "view_time_seconds", seconds > MAX_VIEW_SECONDS),
    ]
    parsed = {
        "user_handle": _handle(),
        "view_date": date,
        "course_id": course,
        "view_time_seconds": seconds,
    }
    accepted, rejects = _validate(lf, rules, parsed, dedupe_on=list(parsed))
    return accepted, rejects, _report(path, started, accepted, rejects)


def _read_interests(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, FileReport]:
    started = time.perf_counter()
    lf = _scan(path, REQUIRED_COLUMNS[INTERESTS])
    date = _text("date_followed").str.strptime(pl.Datetime("us"), DATETIME_FORMAT, strict=False)
    rules = [
        _extra_rule(),
        _utf8_rule(["user_handle", "interest_tag", "date_followed"]),
        *_handle_rules(),
        _Rule("empty_tag", "interest_tag", _text("interest_tag").fill_null("") == ""),
        _Rule("bad_date", "date_followed", date.is_null()),
    ]
    parsed = {
        "user_handle": _handle(),
        "tag": _text("interest_tag").str.to_lowercase(),
        "date_followed": date,
    }
    accepted, rejects = _validate(lf, rules, parsed, dedupe_on=list(parsed))
    tags = pl.Enum(accepted.get_column("tag").unique().sort())
    accepted = accepted.with_columns(pl.col("tag").cast(tags))
    return accepted, rejects, _report(path, started, accepted, rejects)


def _read_assessments(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, FileReport]:
    started = time.perf_counter()
    lf = _scan(path, REQUIRED_COLUMNS[ASSESSMENTS])
    date = _text("user_assessment_date").str.strptime(
        pl.Datetime("us"), DATETIME_FORMAT, strict=False
    )
    score = _text("user_assessment_score").cast(pl.Int64, strict=False)
    rules = [
        _extra_rule(),
        _utf8_rule(
            ["user_handle", "assessment_tag", "user_assessment_date", "user_assessment_score"]
        ),
        *_handle_rules(),
        _Rule("empty_tag", "assessment_tag", _text("assessment_tag").fill_null("") == ""),
        _Rule("bad_date", "user_assessment_date", date.is_null()),
        _Rule("bad_score", "user_assessment_score", score.is_null()),
        _Rule("score_out_of_range", "user_assessment_score", (score < 0) | (score > MAX_SCORE)),
    ]
    parsed = {
        "user_handle": _handle(),
        "tag": _text("assessment_tag").str.to_lowercase(),
        "date": date,
        "score": score,
    }
    accepted, rejects = _validate(lf, rules, parsed, dedupe_on=list(parsed))
    return accepted, rejects, _report(path, started, accepted, rejects)


def _empty(schema: dict[str, type[pl.DataType] | pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def read_tables(data_dir: Path) -> Tables:
    """Read and validate the four-file layout in ``data_dir``.

    Raises InputError (naming file and column) for a missing required file, an unreadable file or
    a missing column. Bad rows never raise: they are returned in ``Tables.rejects``.
    """
    if not data_dir.is_dir():
        problem = "is not a directory" if data_dir.exists() else "does not exist"
        raise InputError(f"{data_dir}: data directory {problem}")
    for name in REQUIRED_FILES:
        if not (data_dir / name).is_file():
            problem = "is not a regular file" if (data_dir / name).exists() else "is missing"
            raise InputError(f"{data_dir / name}: required file {problem}")
    try:
        with _parsing(data_dir / COURSE_TAGS):
            course_tags, courses, tag_rejects, tags_report = _read_course_tags(
                data_dir / COURSE_TAGS
            )
        with _parsing(data_dir / VIEWS):
            views, view_rejects, views_report = _read_views(data_dir / VIEWS, courses)
        reports = [views_report, tags_report]
        rejects = [view_rejects, tag_rejects]

        interests = _empty(
            {"user_handle": pl.Int64, "tag": pl.Enum([]), "date_followed": pl.Datetime("us")}
        )
        if (data_dir / INTERESTS).is_file():
            with _parsing(data_dir / INTERESTS):
                interests, rej, rep = _read_interests(data_dir / INTERESTS)
            rejects.append(rej)
            reports.append(rep)
        else:
            reports.append(FileReport(name=INTERESTS, present=False))
            logger.info("ingest %-28s absent (optional)", INTERESTS)

        assessments = _empty(
            {
                "user_handle": pl.Int64,
                "tag": pl.String,
                "date": pl.Datetime("us"),
                "score": pl.Int64,
            }
        )
        if (data_dir / ASSESSMENTS).is_file():
            with _parsing(data_dir / ASSESSMENTS):
                assessments, rej, rep = _read_assessments(data_dir / ASSESSMENTS)
            rejects.append(rej)
            reports.append(rep)
        else:
            reports.append(FileReport(name=ASSESSMENTS, present=False))
            logger.info("ingest %-28s absent (optional)", ASSESSMENTS)
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{data_dir}: could not parse input: {exc}".splitlines()[0]) from exc

    all_rejects = pl.concat(
        [r.cast(pl.Schema(REJECT_SCHEMA)) for r in rejects],
        how="vertical",
    ).sort("file", "line")
    if views.height == 0 and interests.height == 0 and assessments.height == 0:
        raise BuildError(
            f"{data_dir}: no usable rows in any file (see the rejects: "
            f"{all_rejects.height:,} rows rejected)"
        )
    return Tables(
        views=views,
        course_tags=course_tags,
        courses=courses,
        interests=interests,
        assessments=assessments,
        rejects=all_rejects,
        files=tuple(reports),
    )
