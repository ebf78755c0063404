"""Seeded, deterministic generator of synthetic customer-activity data.

The output mimics the four-file CSV layout of the Pluralsight take-home data
(``user_course_views.csv``, ``course_tags.csv``, ``user_interests.csv``,
``user_assessment_scores.csv``) plus ``communities.csv``, the planted ground truth.
Every string is double-quoted (header names and dates too), numbers are bare,
lines end in LF and there is no BOM.

Generative model
----------------
**World** (one generator, ``SeedSequence(seed, spawn_key=(0,))``):

* A fixed vocabulary of about 1,000 tags in 48 topics. Each topic has a few
  readable tags ("python", "django", ...) and generated ones ("python-tools").
  Topics get Zipf-like popularity; tags inside a topic are Zipf by position.
* ``n_courses`` courses (default ``84 * n_users ** 0.4625``: 5.9k courses for 10k
  customers, 50k for 1M). A course belongs to one topic (courses per topic follow
  topic popularity). Its slug is ``<subject tag>-<level word>-<number>``; it has a
  level (47% / 48% / 5% Beginner / Intermediate / Advanced), an author (Zipf inside
  the topic, ~4.2 courses per author) and 1..15 tags (geometric, mean ~1.9), the
  first being its subject tag and the rest 85% from its own topic. Global course
  popularity is Zipf (exponent 0.65) over a random ranking.
* ``n_communities`` planted communities (default ``max(8, n_users // 500)``, at most
  2,000) with Dirichlet sizes. A community prefers 1-3 topics (Dirichlet weights)
  and has a list of favourite courses from those topics (Zipf weights).

**Customers** are processed in blocks of ``BLOCK_USERS`` customers; block ``b`` has
its own generator ``SeedSequence(seed, spawn_key=(1, b))``. Every random number of a
customer comes from its block's generator, in a fixed order, so the output depends
only on ``(n_users, seed, options)`` and not on ``chunk_size`` (a chunk is a whole
number of blocks; all arithmetic on the drawn numbers is vectorised per chunk).

For each customer:

* community (by size), affinity ``a`` (share of draws from the community, mean 0.8),
  a sign-up day and an activity window (exponential, mean 28 days);
* views (87.6% of customers): a target number ``K`` of distinct courses
  (log-normal, median 5, mean ~12). Course draws come with probability ``0.55 a``
  from the community's favourites, ``0.45 a`` from a community topic (by course
  popularity), else from the global popularity. The first ``K`` distinct courses
  are kept. Each (customer, course) pair has ``1 + NegBin(0.5, 0.265)`` rows (mean
  ~2.4, half the pairs a single row) on a run of nearby distinct days;
  ``view_time_seconds`` is log-normal (sigma 0.978, level means 1,830 / 1,774 /
  1,544 s, capped at 40,000);
* interests (everyone): a target row count (log-normal, median 13, p90 ~64) spread
  over 1+ follow events (more for heavy followers); tags from community topics with
  probability ``a``, else by global tag popularity; distinct per (event, tag);
* assessments (31.1% of customers): 1..15 distinct tests (geometric, mean ~2.1) from
  54 assessment tags (the lead tags of the topics), community-biased the same way;
  score ``N(142, 55)`` clipped to 0..300.

**Dirty rows** (off with ``dirty=False`` / ``--clean``; the random numbers are drawn
either way, so the clean files are the dirty ones minus the dirt): exact duplicate
interest rows (6% of rows), exact duplicate view rows (0.05%), view rows of
unknown (retired) courses that are missing from ``course_tags.csv`` (0.02%), and
courses whose only tag row is the empty string (2%).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK_USERS", "SynthConfig", "SynthReport", "cli", "generate"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

BLOCK_USERS = 100
"""Customers per random-number block. Part of the output format: changing it changes the data."""

VIEWS = "user_course_views.csv"
TAGS = "course_tags.csv"
INTERESTS = "user_interests.csv"
ASSESSMENTS = "user_assessment_scores.csv"
COMMUNITIES = "communities.csv"
FILES = (VIEWS, TAGS, INTERESTS, ASSESSMENTS, COMMUNITIES)

HEADERS: dict[str, tuple[str, ...]] = {
    VIEWS: (
        "user_handle",
        "view_date",
        "course_id",
        "author_handle",
        "level",
        "view_time_seconds",
    ),
    TAGS: ("course_id", "course_tags"),
    INTERESTS: ("user_handle", "interest_tag", "date_followed"),
    ASSESSMENTS: (
        "user_handle",
        "assessment_tag",
        "user_assessment_date",
        "user_assessment_score",
    ),
    COMMUNITIES: ("user_handle", "community"),
}

ACTIVITY_START = dt.date(2017, 5, 1)
ACTIVITY_END = dt.date(2017, 11, 28)
ASSESSMENT_START = dt.date(2016, 7, 13)
N_DAYS = (ACTIVITY_END - ACTIVITY_START).days + 1
N_ASSESSMENT_DAYS = (ACTIVITY_END - ASSESSMENT_START).days + 1

LEVELS = ("Beginner", "Intermediate", "Advanced")
LEVEL_SHARE = (0.47, 0.48, 0.05)
LEVEL_MEAN_SECONDS = (1830.0, 1774.0, 1544.0)
SECONDS_SIGMA = 0.978
SECONDS_CAP = 40_000

N_ASSESSMENT_TAGS = 54
RENDER_ROWS = 250_000

# Topic name -> readable tags; the first tag leads the topic (and is its assessment tag).
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python", ("python", "django", "flask", "pandas", "numpy", "jupyter")),
    ("javascript", ("javascript", "typescript", "node-js", "npm", "webpack", "es6")),
    ("web", ("html5", "css", "sass", "bootstrap", "responsive-design", "web-accessibility")),
    ("angular", ("angular-js", "angular", "rxjs", "ngrx")),
    ("react", ("react", "redux", "react-native", "next-js", "graphql")),
    ("dotnet", ("c-sharp", "dotnet", "aspnet-mvc", "entity-framework", "linq", "blazor")),
    ("java", ("java", "spring", "spring-boot", "maven", "hibernate", "kotlin")),
    ("cpp", ("c-plus-plus", "c", "stl", "cmake", "embedded-systems")),
    ("aws", ("aws", "ec2", "s3", "aws-lambda", "cloudformation", "dynamodb")),
    ("azure", ("azure", "azure-functions", "azure-devops", "arm-templates", "cosmos-db")),
    ("gcp", ("google-cloud", "bigquery", "kubernetes-engine", "firebase")),
    ("devops", ("devops", "docker", "kubernetes", "jenkins", "terraform", "ansible", "ci-cd")),
    ("linux", ("linux", "bash", "shell-scripting", "systemd", "red-hat")),
    ("networking", ("networking", "cisco", "ccna", "routing", "switching", "tcp-ip")),
    (
        "security",
        (
            "information-security",
            "ethical-hacking",
            "penetration-testing",
            "cryptography",
            "incident-response",
        ),
    ),
    (
        "data-science",
        ("machine-learning", "data-science", "statistics", "scikit-learn", "r-language"),
    ),
    (
        "deep-learning",
        ("deep-learning", "tensorflow", "pytorch", "neural-networks", "computer-vision", "nlp"),
    ),
    ("databases", ("sql", "sql-server", "postgresql", "mysql", "mongodb", "database-design")),
    ("big-data", ("hadoop", "spark", "kafka", "data-engineering", "etl")),
    ("bi", ("power-bi", "excel", "tableau", "business-intelligence", "data-visualization")),
    ("mobile", ("android", "ios", "swift", "objective-c", "xamarin", "flutter")),
    ("game-dev", ("unity", "unreal-engine", "game-design", "game-art", "level-design")),
    ("3d", ("3d-modeling", "3d-rendering", "3d-texturing", "3d-animation", "maya", "blender")),
    ("vfx", ("compositing", "nuke", "after-effects", "visual-effects", "houdini")),
    ("2d-art", ("illustration", "digital-painting", "photoshop", "concept-art", "2d-animation")),
    ("graphic-design", ("graphic-design", "illustrator", "indesign", "typography")),
    ("ux", ("ux-design", "ui-design", "user-research", "prototyping", "figma")),
    ("video", ("video-editing", "premiere-pro", "final-cut-pro", "audio-production")),
    ("cad", ("autocad", "solidworks", "revit", "inventor", "bim")),
    ("engineering", ("mechanical-engineering", "fusion-360", "simulation", "3d-printing")),
    ("project-management", ("project-management", "agile", "scrum", "pmp", "kanban", "jira")),
    ("business", ("leadership", "communication", "business-analysis", "product-management")),
    ("office", ("microsoft-office", "word", "powerpoint", "outlook", "sharepoint", "office-365")),
    (
        "windows-server",
        ("windows-server", "active-directory", "powershell", "group-policy", "hyper-v"),
    ),
    ("virtualization", ("vmware", "virtualization", "vsphere", "citrix", "storage")),
    ("testing", ("software-testing", "selenium", "test-automation", "unit-testing", "tdd")),
    (
        "architecture",
        ("design-patterns", "software-architecture", "microservices", "domain-driven-design"),
    ),
    ("systems", ("go", "rust", "concurrency", "systems-programming")),
    ("php-ruby", ("php", "laravel", "wordpress", "ruby", "ruby-on-rails")),
    ("git", ("git", "github", "version-control", "code-review")),
    ("apis", ("rest-api", "web-services", "api-design", "oauth", "json")),
    ("it-ops", ("it-support", "comptia-a-plus", "help-desk", "itil", "troubleshooting")),
    ("iot", ("iot", "raspberry-pi", "arduino", "blockchain")),
    ("marketing", ("google-analytics", "seo", "digital-marketing", "social-media-marketing")),
    ("functional", ("scala", "functional-programming", "f-sharp", "haskell", "elixir")),
    ("crm-erp", ("salesforce", "sap", "dynamics-365", "crm")),
    ("photography", ("photography", "lightroom", "photo-editing", "color-grading")),
    ("data-management", ("data-governance", "master-data", "data-quality", "data-warehousing")),
)

# Suffixes of generated tags ("python-tools"); kept apart from the course-slug words.
TAG_SUFFIXES = (
    "tools",
    "configuration",
    "monitoring",
    "security",
    "architecture",
    "debugging",
    "scripting",
    "networking",
    "storage",
    "apis",
    "optimization",
    "migration",
    "administration",
    "libraries",
    "frameworks",
    "modeling",
    "analytics",
    "certification",
    "ecosystem",
    "internals-overview",
)

# Course-slug words by level.
LEVEL_WORDS: tuple[tuple[str, ...], ...] = (
    (
        "fundamentals",
        "getting-started",
        "introduction",
        "essentials",
        "basics",
        "first-look",
        "quick-start",
    ),
    (
        "in-practice",
        "building-applications",
        "best-practices",
        "patterns",
        "workflows",
        "projects",
        "techniques",
        "integration",
        "testing",
        "deployment",
        "automation",
    ),
    ("advanced", "deep-dive", "internals", "performance-tuning", "mastering", "at-scale"),
)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Output depends only on these fields (``chunk_size`` aside)."""

    n_users: int
    seed: int = 42
    n_courses: int | None = None
    n_communities: int | None = None
    dirty: bool = True
    chunk_size: int = 50_000
    viewer_share: float = 0.876
    assessed_share: float = 0.311
    community_affinity: float = 0.8
    interest_duplicate_rate: float = 0.06
    view_duplicate_rate: float = 0.0005
    unknown_course_rate: float = 0.0002
    empty_tag_rate: float = 0.02

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise ValueError("n_users must be >= 1")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.n_courses is not None and self.n_courses < len(TOPICS):
            raise ValueError(f"n_courses must be >= {len(TOPICS)}")
        if self.n_communities is not None and self.n_communities < 1:
            raise ValueError("n_communities must be >= 1")
        shares = {
            "viewer_share": self.viewer_share,
            "assessed_share": self.assessed_share,
            "community_affinity": self.community_affinity,
        }
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name, value in self.dirty_rates().items():
            if not 0.0 <= value < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5)")

    def courses(self) -> int:
        """Catalogue size: the override, else sub-linear in ``n_users``."""
        if self.n_courses is not None:
            return self.n_courses
        return max(2 * len(TOPICS), round(84.0 * math.pow(self.n_users, 0.4625)))

    def communities(self) -> int:
        """Number of planted communities: the override, else ``max(8, n_users // 500)``."""
        if self.n_communities is not None:
            return self.n_communities
        return min(2_000, max(8, self.n_users // 500))

    def dirty_rates(self) -> dict[str, float]:
        """Configured dirty-row rates (as given, even when ``dirty`` is off)."""
        return {
            "interest_duplicate_rate": self.interest_duplicate_rate,
            "view_duplicate_rate": self.view_duplicate_rate,
            "unknown_course_rate": self.unknown_course_rate,
            "empty_tag_rate": self.empty_tag_rate,
        }

    def rate(self, name: str) -> float:
        """Effective rate of one kind of dirt: zero when ``dirty`` is off."""
        return self.dirty_rates()[name] if self.dirty else 0.0


@dataclass(frozen=True)
class SynthReport:
    """What :func:`generate` wrote."""

    out_dir: Path
    n_users: int
    rows: dict[str, int]
    seconds: float
    n_courses: int = 0
    n_communities: int = 0
    dirty: dict[str, int] = field(default_factory=dict)
    file_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class _Segmented:
    """Weighted choice of an item inside a segment, vectorised with one searchsorted.

    ``cum`` holds ``segment + cumulative share within the segment``, so a query
    ``segment + u`` (u uniform in [0, 1)) lands on an item of that segment.
    """

    cum: F64
    items: I64

    @staticmethod
    def build(segments: I64, items: I64, weights: F64, n_segments: int) -> _Segmented:
        order = np.argsort(segments, kind="stable")
        seg, itm, w = segments[order], items[order], weights[order]
        if np.any(w <= 0) or np.bincount(seg, minlength=n_segments).min() == 0:
            raise ValueError("every segment needs items with positive weight")
        totals = np.bincount(seg, weights=w, minlength=n_segments)
        offsets = np.cumsum(totals) - totals
        within = np.minimum((np.cumsum(w) - offsets[seg]) / totals[seg], 1.0)
        last = np.r_[seg[1:] != seg[:-1], True]
        within[last] = 1.0
        return _Segmented(cum=(seg + within).astype(np.float64), items=itm)

    def sample(self, segments: I64, u: F64 | F32) -> I64:
        query = segments + u * (1.0 - 1e-9)
        return self.items[np.searchsorted(self.cum, query, side="right")]


def _zipf(n: int, exponent: float) -> F64:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent


def _geometric(u: F64 | F32, p: float) -> I64:
    """Inverse-CDF geometric on {1, 2, ...} with success probability ``p``."""
    return (1 + np.floor(np.log1p(-u) / math.log1p(-p))).astype(np.int64)


def _first_unique(keys: I64) -> I64:
    """Positions of the first occurrence of each key, in their original order."""
    _, first = np.unique(keys, return_index=True)
    return np.sort(first).astype(np.int64)


def _rank_in_group(groups: I64) -> I64:
    """0-based position of each element inside its run of equal (sorted) groups."""
    starts = np.searchsorted(groups, groups, side="left")
    return np.arange(groups.size, dtype=np.int64) - starts


def _owners(counts: I64) -> I64:
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


def _day_runs(owner_first: I64, counts: I64, gap_u: F64 | F32, last_day: int) -> I64:
    """Distinct days for each group: a start day then gaps of 1..3 days.

    ``owner_first`` is each group's wished first day, ``counts`` its number of days and
    ``gap_u`` one uniform per element (the first of each group is unused). Runs that
    would pass ``last_day`` are shifted back.
    """
    gaps = np.minimum(_geometric(gap_u, 0.55), 3)
    starts = np.cumsum(counts) - counts
    gaps[starts[counts > 0]] = 0
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[starts[counts > 0]], counts[counts > 0])
    span = np.zeros(counts.size, dtype=np.int64)
    nonempty = counts > 0
    span[nonempty] = offset[starts[nonempty] + counts[nonempty] - 1]
    first = np.clip(np.minimum(owner_first, last_day - span), 0, None)
    days: I64 = np.repeat(first, counts) + offset
    return days


# ------------------------------------------------------------------------------ world


@dataclass(frozen=True)
class _World:
    tag_names: tuple[str, ...]
    topic_pop: F64
    tag_in_topic: _Segmented
    tag_global: _Segmented
    assessment_in_topic: _Segmented
    assessment_global: _Segmented
    n_catalog: int
    course_ids: tuple[str, ...]
    course_level: I64
    course_author: I64
    course_in_topic: _Segmented
    course_global: _Segmented
    course_tag_rows: list[tuple[int, int]]
    empty_tag_courses: Bool
    community_cum: F64
    community_topic: _Segmented
    community_favourite: _Segmented


def _vocabulary() -> tuple[list[str], I64]:
    names: list[str] = []
    topics: list[int] = []
    seen: set[str] = set()
    for t, (_, readable) in enumerate(TOPICS):
        n_generated = 9 + (t * 7) % 12
        generated = [f"{readable[0]}-{sfx}" for sfx in TAG_SUFFIXES[:n_generated]]
        for name in (*readable, *generated):
            if name not in seen:
                seen.add(name)
                names.append(name)
                topics.append(t)
    return names, np.asarray(topics, dtype=np.int64)


def _tag_samplers(
    rng: np.random.Generator, tag_topic: I64
) -> tuple[F64, _Segmented, _Segmented, _Segmented, _Segmented]:
    n_topics = len(TOPICS)
    topic_pop = np.empty(n_topics)
    topic_pop[rng.permutation(n_topics)] = _zipf(n_topics, 0.7)
    topic_pop /= topic_pop.sum()
    position = _rank_in_group(tag_topic)
    tag_w = _zipf(int(position.max()) + 1, 0.9)[position]
    tags = np.arange(tag_topic.size, dtype=np.int64)
    tag_in_topic = _Segmented.build(tag_topic, tags, tag_w, n_topics)
    global_w: F64 = tag_w / np.bincount(tag_topic, weights=tag_w)[tag_topic] * topic_pop[tag_topic]
    tag_global = _Segmented.build(np.zeros_like(tags), tags, global_w, 1)

    leads = tags[position == 0]
    extra = tags[position == 1][np.argsort(-topic_pop, kind="stable")]
    assess = np.sort(np.r_[leads, extra[: max(0, N_ASSESSMENT_TAGS - leads.size)]])
    assess_w = 1.0 / (position[assess] + 1.0)
    assessment_in_topic = _Segmented.build(tag_topic[assess], assess, assess_w, n_topics)
    assessment_global = _Segmented.build(
        np.zeros_like(assess), assess, assess_w * topic_pop[tag_topic[assess]], 1
    )
    return topic_pop, tag_in_topic, tag_global, assessment_in_topic, assessment_global


def _course_tags(
    rng: np.random.Generator,
    subject: I64,
    tag_in_topic: _Segmented,
    tag_global: _Segmented,
    course_topic: I64,
    n_tags_total: int,
) -> list[tuple[int, int]]:
    n = subject.size
    n_tags = np.minimum(_geometric(rng.random(n), 0.53), 15)
    n_extra = 2 * (n_tags - 1)
    owner = _owners(n_extra)
    u = rng.random((owner.size, 3))
    own_topic = tag_in_topic.sample(course_topic[owner], u[:, 1])
    other = tag_global.sample(np.zeros_like(owner), u[:, 1])
    extra = np.where(u[:, 0] < 0.85, own_topic, other)
    # Subject tag first, then the extra draws, grouped by course.
    course = np.r_[np.arange(n, dtype=np.int64), owner]
    tag = np.r_[subject, extra]
    order = np.argsort(course, kind="stable")
    course, tag = course[order], tag[order]
    keep = _first_unique(course * n_tags_total + tag)
    course, tag = course[keep], tag[keep]
    keep_rank = _rank_in_group(course) < n_tags[course]
    return list(zip(course[keep_rank].tolist(), tag[keep_rank].tolist(), strict=True))


def _courses(
    rng: np.random.Generator,
    config: SynthConfig,
    tag_names: Sequence[str],
    topic_pop: F64,
    tag_in_topic: _Segmented,
    tag_global: _Segmented,
) -> dict[str, Any]:
    n_topics = len(TOPICS)
    n_catalog = config.courses()
    n_unknown = max(2, n_catalog // 500)
    n_total = n_catalog + n_unknown
    share = topic_pop**0.9 / np.sum(topic_pop**0.9)
    per_topic = 1 + rng.multinomial(n_catalog - n_topics, share)
    topic = np.r_[_owners(per_topic), rng.choice(n_topics, n_unknown, p=topic_pop)]
    level = rng.choice(3, n_total, p=np.asarray(LEVEL_SHARE))
    subject = tag_in_topic.sample(topic, rng.random(n_total))
    word_u = rng.random(n_total)
    numbers = 100 + rng.choice(10 * n_total, n_total, replace=False)
    ids: list[str] = []
    for s, lv, wu, num in zip(subject.tolist(), level.tolist(), word_u, numbers, strict=True):
        words = LEVEL_WORDS[lv]
        ids.append(f"{tag_names[s]}-{words[int(wu * len(words))]}-{num}")

    pop = np.empty(n_total)
    pop[rng.permutation(n_total)] = _zipf(n_total, 0.65)
    catalog = np.arange(n_catalog, dtype=np.int64)
    in_topic = _Segmented.build(topic[:n_catalog], catalog, pop[:n_catalog], n_topics)
    global_ = _Segmented.build(np.zeros_like(catalog), catalog, pop[:n_catalog], 1)

    per_topic_all = np.bincount(topic, minlength=n_topics)
    n_authors = np.maximum(1, np.round(per_topic_all / 4.2)).astype(np.int64)
    author_offset = np.cumsum(n_authors) - n_authors
    local = np.empty(n_total, dtype=np.int64)
    for t in range(n_topics):
        members = rng.permutation(np.flatnonzero(topic == t))
        k = int(n_authors[t])
        w = _zipf(k, 1.1)
        # Every author has a course; the rest go to authors by Zipf weight.
        local[members] = np.r_[np.arange(k), rng.choice(k, members.size - k, p=w / w.sum())]
    handles = rng.permutation(int(n_authors.sum())) + 1
    author = handles[author_offset[topic] + local]

    tag_rows = _course_tags(
        rng, subject[:n_catalog], tag_in_topic, tag_global, topic[:n_catalog], len(tag_names)
    )
    empty = rng.random(n_catalog) < config.rate("empty_tag_rate")
    return {
        "n_catalog": n_catalog,
        "course_ids": tuple(ids),
        "course_level": level.astype(np.int64),
        "course_author": author.astype(np.int64),
        "course_in_topic": in_topic,
        "course_global": global_,
        "course_tag_rows": tag_rows,
        "empty_tag_courses": empty,
        "topic": topic,
        "pop": pop,
    }


def _communities(
    rng: np.random.Generator, n_communities: int, topic_pop: F64, course_topic: I64, pop: F64
) -> tuple[F64, _Segmented, _Segmented]:
    n_topics = len(TOPICS)
    sizes = rng.dirichlet(np.full(n_communities, 2.0))
    cum = np.cumsum(sizes)
    cum[-1] = 1.0
    k_topics = rng.choice(np.arange(1, 4), n_communities, p=np.array([0.3, 0.45, 0.25]))
    seg_t: list[I64] = []
    item_t: list[I64] = []
    w_t: list[F64] = []
    seg_f: list[I64] = []
    item_f: list[I64] = []
    w_f: list[F64] = []
    by_topic = [np.flatnonzero(course_topic == t) for t in range(n_topics)]
    for c, k in enumerate(k_topics.tolist()):
        chosen = rng.choice(n_topics, k, replace=False, p=topic_pop)
        weights = np.sort(rng.dirichlet(np.full(k, 1.5)))[::-1]
        seg_t.append(np.full(k, c, dtype=np.int64))
        item_t.append(chosen.astype(np.int64))
        w_t.append(weights + 1e-6)
        candidates = np.concatenate([by_topic[t] for t in chosen])
        n_fav = int(np.clip(round(0.15 * candidates.size), min(8, candidates.size), 150))
        keys = np.log(pop[candidates]) + rng.gumbel(size=candidates.size)
        favourites = candidates[np.argsort(-keys, kind="stable")[:n_fav]]
        seg_f.append(np.full(n_fav, c, dtype=np.int64))
        item_f.append(favourites.astype(np.int64))
        w_f.append(_zipf(n_fav, 0.7))
    community_topic = _Segmented.build(
        np.concatenate(seg_t), np.concatenate(item_t), np.concatenate(w_t), n_communities
    )
    favourite = _Segmented.build(
        np.concatenate(seg_f), np.concatenate(item_f), np.concatenate(w_f), n_communities
    )
    return cum, community_topic, favourite


def _build_world(config: SynthConfig) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    names, tag_topic = _vocabulary()
    topic_pop, tag_in_topic, tag_global, assess_in_topic, assess_global = _tag_samplers(
        rng, tag_topic
    )
    courses = _courses(rng, config, names, topic_pop, tag_in_topic, tag_global)
    n_catalog = int(courses["n_catalog"])
    comm_cum, comm_topic, comm_fav = _communities(
        rng,
        config.communities(),
        topic_pop,
        courses["topic"][:n_catalog],
        courses["pop"][:n_catalog],
    )
    return _World(
        tag_names=tuple(names),
        topic_pop=topic_pop,
        tag_in_topic=tag_in_topic,
        tag_global=tag_global,
        assessment_in_topic=assess_in_topic,
        assessment_global=assess_global,
        n_catalog=n_catalog,
        course_ids=courses["course_ids"],
        course_level=courses["course_level"],
        course_author=courses["course_author"],
        course_in_topic=courses["course_in_topic"],
        course_global=courses["course_global"],
        course_tag_rows=courses["course_tag_rows"],
        empty_tag_courses=courses["empty_tag_courses"],
        community_cum=comm_cum,
        community_topic=comm_topic,
        community_favourite=comm_fav,
    )


# ----------------------------------------------------------------------- random blocks


class _Blocks:
    """The per-block generators of one chunk of customers.

    ``per_user`` and ``per_item`` call a drawing function once per block with that
    block's size and concatenate, so each block's generator sees the same sequence of
    calls whatever the chunking.
    """

    def __init__(self, seed: int, first_user: int, n_users: int) -> None:
        first_block = first_user // BLOCK_USERS
        n_blocks = -(-n_users // BLOCK_USERS)
        self.rngs = [
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, first_block + b)))
            for b in range(n_blocks)
        ]
        self.bounds = np.minimum(np.arange(n_blocks + 1) * BLOCK_USERS, n_users)

    def per_user(self, draw: Callable[[np.random.Generator, int], npt.NDArray[Any]]) -> Any:
        sizes = np.diff(self.bounds).tolist()
        return np.concatenate([draw(g, n) for g, n in zip(self.rngs, sizes, strict=True)])

    def per_item(
        self, counts: I64, draw: Callable[[np.random.Generator, int], npt.NDArray[Any]]
    ) -> Any:
        cum = np.r_[0, np.cumsum(counts)]
        sizes = np.diff(cum[self.bounds]).tolist()
        return np.concatenate([draw(g, n) for g, n in zip(self.rngs, sizes, strict=True)])


def _uniforms(k: int) -> Callable[[np.random.Generator, int], F64]:
    return lambda g, n: g.random((n, k))


def _uniforms32(k: int) -> Callable[[np.random.Generator, int], F32]:
    """Single-precision uniforms for the per-draw and per-row arrays (half the memory)."""
    return lambda g, n: g.random((n, k), dtype=np.float32)


def _normals(k: int) -> Callable[[np.random.Generator, int], F64]:
    return lambda g, n: g.standard_normal((n, k))


def _mixture(u: F64 | F32, cuts: Sequence[F64], draws: Sequence[Callable[[I64], I64]]) -> I64:
    """Per element, draw from branch ``b`` = how many of the ascending ``cuts`` are <= ``u``.

    Each branch's sampler only runs on its own elements.
    """
    branch = np.zeros(u.size, dtype=np.int64)
    for cut in cuts:
        branch += u >= cut
    out = np.empty(u.size, dtype=np.int64)
    for b, draw in enumerate(draws):
        idx = np.flatnonzero(branch == b)
        out[idx] = draw(idx)
    return out


@dataclass(frozen=True)
class _Users:
    community: I64
    affinity: F64
    viewer: Bool
    assessed: Bool
    start_day: I64
    window: I64
    n_courses: I64
    n_interests: I64
    n_events: I64
    n_assessments: I64


def _draw_users(blocks: _Blocks, world: _World, config: SynthConfig) -> _Users:
    u: F64 = blocks.per_user(_uniforms(7))
    z: F64 = blocks.per_user(_normals(3))
    community = np.searchsorted(world.community_cum, u[:, 0] * (1 - 1e-9), side="right")
    affinity = np.clip(config.community_affinity + 0.1 * z[:, 2], 0.0, 1.0)
    start = (u[:, 3] * N_DAYS).astype(np.int64)
    window = np.minimum(np.floor(-28.0 * np.log1p(-u[:, 4])), N_DAYS - 1).astype(np.int64)
    max_courses = max(1, min(600, world.n_catalog // 2))
    n_courses = np.clip(np.round(4.8 * np.exp(1.36 * z[:, 0])), 1, max_courses)
    n_interests = np.clip(np.round(13.0 * np.exp(1.25 * z[:, 1])), 1, 5_000).astype(np.int64)
    events = np.minimum(_geometric(u[:, 5], 0.82) + n_interests // 100, n_interests)
    return _Users(
        community=community.astype(np.int64),
        affinity=affinity,
        viewer=u[:, 1] < config.viewer_share,
        assessed=u[:, 2] < config.assessed_share,
        start_day=start,
        window=window,
        n_courses=n_courses.astype(np.int64),
        n_interests=n_interests,
        n_events=np.minimum(events, 40),
        n_assessments=np.minimum(_geometric(u[:, 6], 0.474), 15),
    )


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class _ViewRows:
    user: I64
    day: I64
    course: I64
    seconds: I64
    duplicates: int
    unknown: int


def _draw_courses(blocks: _Blocks, world: _World, users: _Users, owner: I64, n: I64) -> I64:
    """``n`` course draws per user: community favourites, community topics, or anywhere."""
    u: F32 = blocks.per_item(n, _uniforms32(3))
    comm = users.community[owner]
    a = users.affinity[owner]
    return _mixture(
        u[:, 0],
        [0.55 * a, a],
        [
            lambda i: world.community_favourite.sample(comm[i], u[i, 2]),
            lambda i: world.course_in_topic.sample(
                world.community_topic.sample(comm[i], u[i, 1]), u[i, 2]
            ),
            lambda i: world.course_global.sample(np.zeros_like(i), u[i, 2]),
        ],
    )


def _pick_courses(blocks: _Blocks, world: _World, users: _Users) -> tuple[I64, I64]:
    """Distinct (user, course) pairs, the first ``n_courses`` distinct draws per viewer."""
    n_draws = np.where(users.viewer, 2 * users.n_courses + 3, 0)
    owner = _owners(n_draws)
    course = _draw_courses(blocks, world, users, owner, n_draws)
    keep = _first_unique(owner * world.n_catalog + course)
    owner, course = owner[keep], course[keep]
    keep_rank = _rank_in_group(owner) < users.n_courses[owner]
    return owner[keep_rank], course[keep_rank]


def _views(blocks: _Blocks, world: _World, users: _Users, config: SynthConfig) -> _ViewRows:
    owner, course = _pick_courses(blocks, world, users)
    n_users = users.viewer.size
    pairs_per_user = np.bincount(owner, minlength=n_users).astype(np.int64)
    pair_draw: F64 = blocks.per_item(
        pairs_per_user,
        lambda g, n: np.column_stack([g.negative_binomial(0.5, 0.265, n), g.random(n)]),
    )
    n_rows = np.minimum(1 + pair_draw[:, 0].astype(np.int64), 60)
    last = np.minimum(users.start_day + users.window, N_DAYS - 1)[owner]
    first = users.start_day[owner] + (pair_draw[:, 1] * (last - users.start_day[owner] + 1))
    rows_per_user = np.bincount(owner, weights=n_rows, minlength=n_users).astype(np.int64)
    row_u: F32 = blocks.per_item(rows_per_user, _uniforms32(4))
    row_z: F32 = blocks.per_item(rows_per_user, lambda g, n: g.standard_normal(n, dtype=np.float32))
    day = _day_runs(first.astype(np.int64), n_rows, row_u[:, 0], N_DAYS - 1)
    user = np.repeat(owner, n_rows)
    course = np.repeat(course, n_rows)

    n_unknown = len(world.course_ids) - world.n_catalog
    unknown = row_u[:, 2] < config.rate("unknown_course_rate")
    unknown_pick = world.n_catalog + (row_u[:, 3] * n_unknown).astype(np.int64)
    course = np.where(unknown, unknown_pick, course)

    level = world.course_level[course]
    median = np.asarray(LEVEL_MEAN_SECONDS)[level] / math.exp(SECONDS_SIGMA**2 / 2)
    seconds = np.clip(np.round(median * np.exp(SECONDS_SIGMA * row_z)), 1, SECONDS_CAP)

    order = np.argsort((user * N_DAYS + day) * len(world.course_ids) + course, kind="stable")
    copies = np.where(row_u[order, 1] < config.rate("view_duplicate_rate"), 2, 1)
    take = np.repeat(order, copies)
    return _ViewRows(
        user=user[take],
        day=day[take],
        course=course[take],
        seconds=seconds[take].astype(np.int64),
        duplicates=int(copies.sum() - copies.size),
        unknown=int(unknown[take].sum()),
    )


@dataclass(frozen=True)
class _StampedRows:
    user: I64
    tag: I64
    day: I64
    second: I64
    extra: I64
    duplicates: int


def _draw_interests(
    blocks: _Blocks, world: _World, users: _Users, owner: I64, n: I64
) -> tuple[I64, I64]:
    """``n`` (tag, follow event) draws per user; tags from community topics or anywhere."""
    u: F32 = blocks.per_item(n, _uniforms32(4))
    tag = _mixture(
        u[:, 0],
        [users.affinity[owner]],
        [
            lambda i: world.tag_in_topic.sample(
                world.community_topic.sample(users.community[owner[i]], u[i, 1]), u[i, 2]
            ),
            lambda i: world.tag_global.sample(np.zeros_like(i), u[i, 2]),
        ],
    )
    event = (u[:, 3] * users.n_events[owner]).astype(np.int64)
    return tag, event


def _interests(blocks: _Blocks, world: _World, users: _Users, config: SynthConfig) -> _StampedRows:
    n_users = users.viewer.size
    n_draws = 3 * users.n_interests + 3
    owner = _owners(n_draws)
    tag, event = _draw_interests(blocks, world, users, owner, n_draws)
    n_tags = len(world.tag_names)
    keep = _first_unique((owner * 64 + event) * n_tags + tag)
    owner, tag, event = owner[keep], tag[keep], event[keep]
    keep_rank = _rank_in_group(owner) < users.n_interests[owner]
    owner, tag, event = owner[keep_rank], tag[keep_rank], event[keep_rank]

    event_u: F64 = blocks.per_item(users.n_events, _uniforms(2))
    event_day = _day_runs(users.start_day, users.n_events, event_u[:, 0], N_DAYS - 1)
    event_second = (event_u[:, 1] * 86_400).astype(np.int64)
    event_base = np.cumsum(users.n_events) - users.n_events
    ev = event_base[owner] + event

    rows_per_user = np.bincount(owner, minlength=n_users).astype(np.int64)
    row_u: F32 = blocks.per_item(rows_per_user, _uniforms32(2))
    p_copy = config.rate("interest_duplicate_rate")
    p_copy /= 1.0 - p_copy
    order = np.lexsort((row_u[:, 1], event_day[ev] * 86_400 + event_second[ev], owner))
    copies = np.where(row_u[order, 0] < p_copy, 2, 1)
    take = np.repeat(order, copies)
    return _StampedRows(
        user=owner[take],
        tag=tag[take],
        day=event_day[ev][take],
        second=event_second[ev][take],
        extra=np.zeros(take.size, dtype=np.int64),
        duplicates=int(copies.sum() - copies.size),
    )


def _assessments(blocks: _Blocks, world: _World, users: _Users) -> _StampedRows:
    n_users = users.viewer.size
    n_draws = np.where(users.assessed, 4 * users.n_assessments + 2, 0)
    u: F64 = blocks.per_item(n_draws, _uniforms(3))
    owner = _owners(n_draws)
    tag = _mixture(
        u[:, 0],
        [0.75 * users.affinity[owner]],
        [
            lambda i: world.assessment_in_topic.sample(
                world.community_topic.sample(users.community[owner[i]], u[i, 1]), u[i, 2]
            ),
            lambda i: world.assessment_global.sample(np.zeros_like(i), u[i, 2]),
        ],
    )
    keep = _first_unique(owner * len(world.tag_names) + tag)
    owner, tag = owner[keep], tag[keep]
    keep_rank = _rank_in_group(owner) < users.n_assessments[owner]
    owner, tag = owner[keep_rank], tag[keep_rank]

    rows_per_user = np.bincount(owner, minlength=n_users).astype(np.int64)
    row_u: F64 = blocks.per_item(rows_per_user, _uniforms(1))
    row_z: F64 = blocks.per_item(rows_per_user, _normals(1))[:, 0]
    score = np.clip(np.round(142.0 + 55.0 * row_z), 0, 300).astype(np.int64)
    moment = (row_u[:, 0] * N_ASSESSMENT_DAYS * 86_400).astype(np.int64)
    name_rank = np.argsort(np.argsort(np.asarray(world.tag_names)))
    order = np.lexsort((name_rank[tag], owner))
    return _StampedRows(
        user=owner[order],
        tag=tag[order],
        day=moment[order] // 86_400,
        second=moment[order] % 86_400,
        extra=score[order],
        duplicates=0,
    )


# -------------------------------------------------------------------------- rendering


def _text_table(values: Sequence[str]) -> U8:
    """Zero-padded byte matrix, one row per value (no value may contain NUL)."""
    encoded = [v.encode("ascii") for v in values]
    width = max(1, *(len(e) for e in encoded))
    return np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(len(encoded), width)


def _int_field(values: I64) -> U8:
    """Decimal digits of non-negative ints, leading zeros as NUL (dropped on render)."""
    width = len(str(int(values.max()))) if values.size else 1
    out = np.empty((values.size, width), dtype=np.uint8)
    for k in range(width):
        power = 10 ** (width - 1 - k)
        digits = ((values // power) % 10 + 48).astype(np.uint8)
        if k < width - 1:
            digits[values < power] = 0
        out[:, k] = digits
    return out


def _render(fields: Sequence[U8 | bytes]) -> bytes:
    """Concatenate per-row fields and drop the NUL padding."""
    n = next(f.shape[0] for f in fields if not isinstance(f, bytes))
    widths = [len(f) if isinstance(f, bytes) else f.shape[1] for f in fields]
    mat = np.empty((n, sum(widths)), dtype=np.uint8)
    pos = 0
    for f, w in zip(fields, widths, strict=True):
        mat[:, pos : pos + w] = np.frombuffer(f, dtype=np.uint8) if isinstance(f, bytes) else f
        pos += w
    return bytes(mat[mat != 0].tobytes())


def _header(name: str) -> bytes:
    return (",".join(f'"{h}"' for h in HEADERS[name]) + "\n").encode("ascii")


def _dates(start: dt.date, n: int) -> list[str]:
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


@dataclass(frozen=True)
class _Tables:
    view_date: U8
    view_course: U8
    tag: U8
    activity_day: U8
    assessment_day: U8
    clock: U8
    clock_score: U8

    @staticmethod
    def build(world: _World) -> _Tables:
        days = _dates(ACTIVITY_START, N_DAYS)
        clock = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)]
        course = [
            f'"{cid}",{author},"{LEVELS[level]}",'
            for cid, author, level in zip(
                world.course_ids,
                world.course_author.tolist(),
                world.course_level.tolist(),
                strict=True,
            )
        ]
        return _Tables(
            view_date=_text_table([f',"{d}",' for d in days]),
            view_course=_text_table(course),
            tag=_text_table([f',"{t}","' for t in world.tag_names]),
            activity_day=_text_table([f"{d} " for d in days]),
            assessment_day=_text_table(
                [f"{d} " for d in _dates(ASSESSMENT_START, N_ASSESSMENT_DAYS)]
            ),
            clock=_text_table([f'{c}"\n' for c in clock]),
            clock_score=_text_table([f'{c}",' for c in clock]),
        )


def _slices(n: int) -> list[slice]:
    return [slice(i, min(n, i + RENDER_ROWS)) for i in range(0, n, RENDER_ROWS)]


def _write_views(fh: BinaryIO, rows: _ViewRows, first_handle: int, tables: _Tables) -> None:
    for s in _slices(rows.user.size):
        fh.write(
            _render(
                [
                    _int_field(rows.user[s] + first_handle),
                    tables.view_date[rows.day[s]],
                    tables.view_course[rows.course[s]],
                    _int_field(rows.seconds[s]),
                    b"\n",
                ]
            )
        )


def _write_stamped(
    fh: BinaryIO, rows: _StampedRows, first_handle: int, tables: _Tables, scored: bool
) -> None:
    day_table = tables.assessment_day if scored else tables.activity_day
    for s in _slices(rows.user.size):
        fields: list[U8 | bytes] = [
            _int_field(rows.user[s] + first_handle),
            tables.tag[rows.tag[s]],
            day_table[rows.day[s]],
        ]
        if scored:
            fields += [tables.clock_score[rows.second[s]], _int_field(rows.extra[s]), b"\n"]
        else:
            fields.append(tables.clock[rows.second[s]])
        fh.write(_render(fields))


def _write_communities(fh: BinaryIO, community: I64, first_handle: int) -> None:
    handles = np.arange(community.size, dtype=np.int64) + first_handle
    fh.write(_render([_int_field(handles), b",", _int_field(community), b"\n"]))


def _write_course_tags(fh: BinaryIO, world: _World) -> tuple[int, int]:
    tags: list[list[str]] = [[] for _ in range(world.n_catalog)]
    for course, tag in world.course_tag_rows:
        tags[course].append(world.tag_names[tag])
    lines: list[str] = []
    n_empty = 0
    for course in sorted(range(world.n_catalog), key=lambda c: world.course_ids[c]):
        cid = world.course_ids[course]
        if world.empty_tag_courses[course]:
            lines.append(f'"{cid}",""\n')
            n_empty += 1
        else:
            lines.extend(f'"{cid}","{t}"\n' for t in tags[course])
    fh.write("".join(lines).encode("ascii"))
    return len(lines), n_empty


# ------------------------------------------------------------------------------ driver


def _chunk_bounds(config: SynthConfig) -> list[tuple[int, int]]:
    step = -(-config.chunk_size // BLOCK_USERS) * BLOCK_USERS
    return [(a, min(config.n_users, a + step)) for a in range(0, config.n_users, step)]


def generate(config: SynthConfig, out_dir: Path) -> SynthReport:
    """Write the five CSV files for ``config`` into ``out_dir`` (created if needed)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = _build_world(config)
    tables = _Tables.build(world)
    rows = dict.fromkeys(FILES, 0)
    seconds = dict.fromkeys(FILES, 0.0)
    dirty = dict.fromkeys(
        (
            "duplicate_view_rows",
            "unknown_course_view_rows",
            "duplicate_interest_rows",
            "empty_tag_courses",
        ),
        0,
    )
    handles: dict[str, BinaryIO] = {name: (out_dir / name).open("wb") for name in FILES}
    try:
        for name, fh in handles.items():
            fh.write(_header(name))
        rows[TAGS], dirty["empty_tag_courses"] = _write_course_tags(handles[TAGS], world)
        seconds[TAGS] = time.perf_counter() - started
        for first, stop in _chunk_bounds(config):
            _generate_chunk(config, world, tables, first, stop, handles, rows, seconds, dirty)
            log.info("synth: %d / %d customers", stop, config.n_users)
    finally:
        for fh in handles.values():
            fh.close()
    return SynthReport(
        out_dir=out_dir,
        n_users=config.n_users,
        rows=rows,
        seconds=time.perf_counter() - started,
        n_courses=world.n_catalog,
        n_communities=config.communities(),
        dirty=dirty,
        file_seconds=seconds,
    )


def _generate_chunk(
    config: SynthConfig,
    world: _World,
    tables: _Tables,
    first: int,
    stop: int,
    handles: dict[str, BinaryIO],
    rows: dict[str, int],
    seconds: dict[str, float],
    dirty: dict[str, int],
) -> None:
    t0 = time.perf_counter()
    blocks = _Blocks(config.seed, first, stop - first)
    users = _draw_users(blocks, world, config)
    handle0 = first + 1
    _write_communities(handles[COMMUNITIES], users.community, handle0)
    rows[COMMUNITIES] += stop - first
    t1 = time.perf_counter()
    seconds[COMMUNITIES] += t1 - t0

    views = _views(blocks, world, users, config)
    _write_views(handles[VIEWS], views, handle0, tables)
    rows[VIEWS] += views.user.size
    dirty["duplicate_view_rows"] += views.duplicates
    dirty["unknown_course_view_rows"] += views.unknown
    t2 = time.perf_counter()
    seconds[VIEWS] += t2 - t1

    interests = _interests(blocks, world, users, config)
    _write_stamped(handles[INTERESTS], interests, handle0, tables, scored=False)
    rows[INTERESTS] += interests.user.size
    dirty["duplicate_interest_rows"] += interests.duplicates
    t3 = time.perf_counter()
    seconds[INTERESTS] += t3 - t2

    assessments = _assessments(blocks, world, users)
    _write_stamped(handles[ASSESSMENTS], assessments, handle0, tables, scored=True)
    rows[ASSESSMENTS] += assessments.user.size
    seconds[ASSESSMENTS] += time.perf_counter() - t3


MAX_USERS = 100_000_000
"""Most customers ``generate`` accepts: a typo of a few zeros must not allocate until it dies."""
MAX_COURSES = 1_000_000
MAX_COMMUNITIES = 100_000
MAX_CHUNK_SIZE = 1_000_000

#: SynthConfig's defaults: the one place the command line and its --help take them from.
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SynthConfig)}

#: option (its dest) -> smallest and largest value the command line accepts (None: no bound).
_BOUNDS: dict[str, tuple[int, int | None]] = {
    "users": (1, MAX_USERS),
    "seed": (0, None),
    "courses": (len(TOPICS), MAX_COURSES),
    "communities": (1, MAX_COMMUNITIES),
    "chunk_size": (1, MAX_CHUNK_SIZE),
}


def _allowed(dest: str) -> str:
    """The values an option accepts, in words: "between 1 and 100,000,000" or "0 or more"."""
    low, high = _BOUNDS[dest]
    return f"{low:,} or more" if high is None else f"between {low:,} and {high:,}"


def _grows_with_users(count: Callable[[SynthConfig], int]) -> str:
    """A default that depends on --users, shown by example (computed, so it cannot drift)."""
    examples = ", ".join(f"{count(SynthConfig(n_users=n)):,} for {n:,}" for n in (10**3, 10**6))
    return f"grows with --users: {examples} customers"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="similarity_api generate",
        description="Generate seeded synthetic customer-activity CSVs (Pluralsight layout) and "
        "communities.csv, the planted ground truth. Same options, same bytes.",
    )
    p.add_argument(
        "--users", type=int, required=True, help=f"customers, {_allowed('users')} [required]"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS["seed"],
        help=f"random seed, {_allowed('seed')} [{_DEFAULTS['seed']}]",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory, created if missing; files of the same names are overwritten "
        "[required]",
    )
    p.add_argument(
        "--courses",
        type=int,
        default=_DEFAULTS["n_courses"],
        help=f"catalogue size, {_allowed('courses')} [{_grows_with_users(SynthConfig.courses)}]",
    )
    p.add_argument(
        "--communities",
        type=int,
        default=_DEFAULTS["n_communities"],
        help=f"planted communities, {_allowed('communities')} "
        f"[{_grows_with_users(SynthConfig.communities)}]",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help=f"write no dirty rows [{'off: dirty rows are written' if _DEFAULTS['dirty'] else 'on'}]",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=_DEFAULTS["chunk_size"],
        help=f"customers generated at a time, {_allowed('chunk_size')}; changes memory use, "
        f"never the output [{_DEFAULTS['chunk_size']}]",
    )
    return p


def _option_problem(args: argparse.Namespace) -> str | None:
    """The first option outside its bounds, as a message naming it (None: every one is usable)."""
    for dest, (low, high) in _BOUNDS.items():
        value = getattr(args, dest)
        if value is not None and (value < low or (high is not None and value > high)):
            return f"--{dest.replace('_', '-')} must be {_allowed(dest)}, got {value:,}"
    return None


def cli(argv: Sequence[str] | None = None) -> int:
    """``generate`` sub-command: parse ``argv``, write the files, summarise on stderr.

    A bad option is one ``error:`` line and exit 2; an output folder that cannot be written, exit 1.
    """
    args = _parser().parse_args(argv)
    problem = _option_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from similarity_api.build.cli import directory_problem

    problem = directory_problem(args.out, "output directory")
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    config = SynthConfig(
        n_users=args.users,
        seed=args.seed,
        n_courses=args.courses,
        n_communities=args.communities,
        dirty=not args.clean,
        chunk_size=args.chunk_size,
    )
    try:
        report = generate(config, args.out)
    except OSError as exc:  # e.g. the disk filled up
        print(f"error: {exc.filename or args.out}: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    for name in FILES:
        print(
            f"{report.out_dir / name}: {report.rows[name]:,} rows "
            f"({report.file_seconds[name]:.1f} s)",
            file=sys.stderr,
        )
    dirt = ", ".join(f"{k} {v:,}" for k, v in report.dirty.items())
    print(
        f"generated {report.n_users:,} customers, {report.n_courses:,} courses, "
        f"{report.n_communities:,} communities in {report.seconds:.1f} s; dirty: {dirt}",
        file=sys.stderr,
    )
    return 0
