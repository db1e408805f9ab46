"""The emulator's model catalogue: what ``GET /v1/models`` lists and which names a
request may use.

One table (``_TABLE``), newest first as the SDK's ``Model`` literal orders them, gives
each model id its display name, release date, line, limits and lifecycle; aliases
(``claude-opus-4-1``, ``claude-3-5-haiku-latest``, ...) resolve to the id they name, as
``GET /v1/models/{alias}`` does on the service. The accepted names are the
configuration's (``EmulatorConfig.models``, by default ``KNOWN_MODELS``): an accepted
name the table does not describe is listed with what is known of it (its id), and a
name that is not accepted (unknown, or ``retired`` in the table) is answered
``404 not_found_error`` by every route that takes a model.

Where a model's release date is not part of its id and not documented, ``created_at``
is the epoch, the value the SDK documents for "release date unknown"; the list keeps
the table's order (newest first) either way. Deprecation dates are the end-of-life
dates the SDK's deprecation warnings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from pipeline.api._types import ModelInfo

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ("ALIASES", "RETIRED_MODELS", "Catalog")

_EPOCH = "1970-01-01T00:00:00Z"
Lifecycle = Literal["active", "deprecated", "retired"]


class _Row(NamedTuple):
    id: str
    display_name: str
    released: str | None  # YYYY-MM-DD, None when unknown
    max_tokens: int | None = None
    max_input_tokens: int | None = None
    retires: str | None = None  # YYYY-MM-DD: deprecated (or retired) with this end of life
    retired: bool = False


# Newest first. Limits only where Anthropic's docs state them.
_TABLE: tuple[_Row, ...] = (
    _Row("claude-fable-5-2", "Claude Fable 5.2", None),
    _Row("claude-mythos-5-2", "Claude Mythos 5.2", None),
    _Row("claude-haiku-5-5", "Claude Haiku 5.5", None),
    _Row("claude-sonnet-5-5", "Claude Sonnet 5.5", None),
    _Row("claude-fable-5-1", "Claude Fable 5.1", None),
    _Row("claude-opus-5-5", "Claude Opus 5.5", None),
    _Row("claude-mythos-5-1", "Claude Mythos 5.1", None),
    _Row("claude-sonnet-5", "Claude Sonnet 5", None),
    _Row("claude-fable-5", "Claude Fable 5", None),
    _Row("claude-mythos-5", "Claude Mythos 5", None),
    _Row("claude-opus-5", "Claude Opus 5", None),
    _Row("claude-opus-4-8", "Claude Opus 4.8", None),
    _Row("claude-opus-4-7", "Claude Opus 4.7", None),
    _Row("claude-mythos-preview", "Claude Mythos Preview", None, retires="2026-06-30"),
    _Row("claude-opus-4-6", "Claude Opus 4.6", None),
    _Row("claude-sonnet-4-6", "Claude Sonnet 4.6", None),
    _Row("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01", 64000, 200000, "2027-01-22"),
    _Row("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01", 64000, 200000),
    _Row(
        "claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29", 64000, 200000, "2026-11-30"
    ),
    _Row("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05", 32000, 200000),
    _Row("claude-opus-4-20250514", "Claude Opus 4", "2025-05-14", 32000, 200000, "2026-06-15"),
    _Row("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14", 64000, 200000, "2026-06-15"),
    _Row(
        "claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-19", 64000, 200000, "2026-02-19"
    ),
    _Row("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22", 8192, 200000),
    _Row("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22", 8192, 200000, "2026-02-19"),
    _Row("claude-3-5-sonnet-20240620", "Claude Sonnet 3.5 (Old)", "2024-06-20", 8192, 200000),
    _Row("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07", 4096, 200000),
    _Row("claude-3-opus-20240229", "Claude Opus 3", "2024-02-29", 4096, 200000, "2026-01-05"),
    # Retired: in the catalogue (``lifecycle=retired``), refused by every request.
    _Row(
        "claude-3-sonnet-20240229",
        "Claude Sonnet 3",
        "2024-02-29",
        4096,
        200000,
        "2025-07-21",
        True,
    ),
    _Row("claude-2.1", "Claude 2.1", "2023-11-21", 4096, 200000, "2025-07-21", True),
    _Row("claude-2.0", "Claude 2.0", "2023-07-11", 4096, 100000, "2025-07-21", True),
    _Row(
        "claude-instant-1.2", "Claude Instant 1.2", "2023-08-09", 4096, 100000, "2024-11-06", True
    ),
)

#: alias -> the model id it names (``GET /v1/models/{alias}`` answers with that model)
ALIASES: dict[str, str] = {
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}

#: Model ids the service has retired: listed only on request, refused everywhere.
RETIRED_MODELS: frozenset[str] = frozenset(row.id for row in _TABLE if row.retired)
_LINES = ("haiku", "sonnet", "opus", "fable", "mythos")


def _date(day: str | None) -> str | None:
    return None if day is None else f"{day}T00:00:00Z"


def _info(row: _Row) -> ModelInfo:
    lifecycle: Lifecycle = "retired" if row.retired else "deprecated" if row.retires else "active"
    return ModelInfo(
        id=row.id,
        display_name=row.display_name,
        created_at=_date(row.released) or _EPOCH,
        lifecycle=lifecycle,
        retires_at=_date(row.retires),
        line=next((line for line in _LINES if f"-{line}" in row.id), None),
        max_tokens=row.max_tokens,
        max_input_tokens=row.max_input_tokens,
    )


def _unlisted(model: str) -> ModelInfo:
    """An accepted name the table does not describe."""
    return _info(_Row(model, model, None))


_BY_ID: dict[str, ModelInfo] = {row.id: _info(row) for row in _TABLE}


class Catalog:
    """The models of one emulator: ``accepted`` names (None: any name)."""

    def __init__(self, accepted: Iterable[str] | None) -> None:
        self.accepted: frozenset[str] | None = (
            None if accepted is None else frozenset(accepted) - RETIRED_MODELS
        )
        names = set(_BY_ID) - RETIRED_MODELS if self.accepted is None else set(self.accepted)
        # an alias is listed as the model it names, when that one is listed
        listed = {ALIASES.get(n, n) if ALIASES.get(n) in names else n for n in names}
        known = [info for info in _BY_ID.values() if info.id in listed]
        extra = sorted(listed - set(_BY_ID), reverse=True)
        #: newest first: the table's order, then the names it does not describe
        self.models: list[ModelInfo] = [
            *known,
            *map(_unlisted, extra),
            *(_BY_ID[m] for m in sorted(RETIRED_MODELS)),
        ]
        self._index = {info.id: i for i, info in enumerate(self.models)}

    def accepts(self, model: str) -> bool:
        """True if a request may name ``model``."""
        if self.accepted is None:
            return model not in RETIRED_MODELS
        return model in self.accepted

    def get(self, model: str) -> ModelInfo | None:
        """``GET /v1/models/{model}``: the model (an alias resolved), or None."""
        if not self.accepts(model):
            return _BY_ID.get(model) if model in RETIRED_MODELS else None
        index = self._index.get(ALIASES.get(model, model))
        return self.models[index] if index is not None else _unlisted(model)

    def page(
        self,
        lifecycles: frozenset[str],
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> tuple[list[ModelInfo], bool] | None:
        """One page of the list, newest first, and whether more follow; None when a
        cursor names no model of the list."""
        models = [m for m in self.models if m.lifecycle in lifecycles]
        ids = [m.id for m in models]
        if after is not None:
            if after not in ids:
                return None
            lo = ids.index(after) + 1
            return models[lo : lo + limit], lo + limit < len(models)
        if before is not None:
            if before not in ids:
                return None
            hi = ids.index(before)
            lo = max(0, hi - limit)
            return models[lo:hi], lo > 0
        return models[:limit], limit < len(models)
