"""Composing a pipeline: the standard stages and the user's, in one typed list.

Every stage is a ``StageSpec``: a name, the kind of item it takes and the kind it
gives. The kinds, in the order a job's items pass through them::

    record        anything a source of records yields (a dict, a dataclass, a row)
    request line  one encoded batch entry {"custom_id": ..., "params": ...}, unchecked
    request       a checked entry (``Entry``), ready to be packed into a batch
    chunk / submitted batch / ended batch   (inside the fixed core)
    result        one result, joined with its request (``JoinedResult``)
    output        the user's own output records

``compose(stages)`` checks the list before anything runs: each stage takes what
the one before it gives (a ``UsageError`` names both otherwise); the core
(chunker, submitter, poller, results) is present and in order, since the retry
loop joins its ends; dry run and spend guard may be left out.

A list holding only user stages is inserted into the standard one, as Starlette
inserts user middleware between its own: stages on records and request builders
after the source, stages on requests after validate, result processors before the
sink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import UsageError
from ._user import is_general

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = (
    "CHUNKER",
    "DRY_RUN",
    "POLLER",
    "RESULTS",
    "SINK",
    "SOURCE",
    "SPEND_GUARD",
    "STANDARD_STAGES",
    "SUBMITTER",
    "VALIDATE",
    "Plan",
    "StageSpec",
    "build_requests",
    "compose",
    "on_records",
    "on_requests",
    "process_results",
)

RECORD = "record"
REQUEST_LINE = "request line"
REQUEST = "request"
CHUNK = "chunk"
SUBMITTED = "submitted batch"
ENDED = "ended batch"
RESULT = "result"
OUTPUT = "output"


class StageSpec:
    """One stage of a composition: ``name``, the kind of item it takes (``input``)
    and gives (``output``), and for a user stage its function ``fn`` (a plain
    function of one item, or a general stage ``async def stage(receive, send, /)``).
    The standard stages have no ``fn``: the runner wires them with the job's
    client, ledger and configuration."""

    __slots__ = ("fn", "general", "input", "name", "optional", "output", "routes", "standard")

    def __init__(
        self,
        name: str,
        input: str | None,
        output: str | None,
        fn: Callable[..., Any] | None = None,
        *,
        standard: bool = False,
        optional: bool = False,
    ) -> None:
        self.name = name
        self.input = input
        self.output = output
        self.fn = fn
        self.standard = standard
        self.optional = optional
        self.general = fn is not None and is_general(fn)
        #: a result processor's further sinks, by name (paths or ``ResultSink``s)
        self.routes: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"StageSpec({self.name!r}: {self.input} -> {self.output})"

    def replaced_by(self, fn: Callable[..., Any]) -> StageSpec:
        """This standard stage done by ``fn`` instead (a submitter that talks to a
        gateway, another chunker): the runner calls ``fn`` with the arguments it
        gives the standard one (``pipeline.stages.submitter``'s signature for
        ``SUBMITTER``, and so on). The source and the sink are replaced through
        ``Pipeline(source=..., output=...)``."""
        if not self.standard:
            raise UsageError(f"{self.name!r} is not a standard stage: list another stage instead")
        if self.input is None or self.output is None:
            raise UsageError(
                f"the {self.name} is replaced through Pipeline(source=..., output=...)"
            )
        spec = StageSpec(self.name, self.input, self.output, standard=True, optional=self.optional)
        spec.fn = fn
        return spec


def _standard(
    name: str, input: str | None, output: str | None, *, optional: bool = False
) -> StageSpec:
    return StageSpec(name, input, output, standard=True, optional=optional)


#: The job's input: a JSONL file or a source stage gives request lines; an iterable
#: gives records when a request builder follows, else request lines.
SOURCE = _standard("source", None, REQUEST_LINE)
#: Checks each request line against the Messages schema; bad ones go to rejects.
VALIDATE = _standard("validate", REQUEST_LINE, REQUEST)
#: Sends samples of each request shape to the Messages API first (``config.dry_run``).
DRY_RUN = _standard("dry_run", REQUEST, REQUEST, optional=True)
#: Stops claiming requests once ``config.budget_usd`` would be passed.
SPEND_GUARD = _standard("spend_guard", REQUEST, REQUEST, optional=True)
#: Packs requests into batches within ``max_batch_requests`` / ``max_batch_bytes``.
CHUNKER = _standard("chunker", REQUEST, CHUNK)
#: Records each batch in the ledger, then creates it at the service.
SUBMITTER = _standard("submitter", CHUNK, SUBMITTED)
#: Polls batches until they end.
POLLER = _standard("poller", SUBMITTED, ENDED)
#: Downloads results, spools retryable ones, hands the rest on with their request.
RESULTS = _standard("results", ENDED, RESULT)
#: The job's output (``Pipeline(output=...)``): a JSONL file, a callback, a sink.
SINK = _standard("sink", RESULT, None)

#: The standard chain, in order (``pipeline run IN -o OUT`` is this composition).
STANDARD_STAGES = (
    SOURCE,
    VALIDATE,
    DRY_RUN,
    SPEND_GUARD,
    CHUNKER,
    SUBMITTER,
    POLLER,
    RESULTS,
    SINK,
)
_CORE = (CHUNKER, SUBMITTER, POLLER, RESULTS)


def _name(fn: Callable[..., Any], name: str | None) -> str:
    return name or getattr(fn, "__name__", None) or type(fn).__name__


def build_requests(fn: Callable[..., Any], *, name: str | None = None) -> StageSpec:
    """A request builder: records in, batch entries out.

    ``fn`` is ``def build(record) -> entry | list[entry] | None`` (sync or async;
    an entry is ``{"custom_id": ..., "params": {...}}`` as a dict, a Struct or its
    encoded bytes; None skips the record, counted as filtered), or a general stage
    ``async def build(receive, send, /)`` that receives ``Record`` items and sends
    ``record.request(entry)``. What it builds is validated like an input line, and
    its bytes are what the ledger keeps: a retry sends them again without calling
    the builder. Records after the last checkpoint are built again after a crash,
    so a builder must be deterministic (same record, same entry)."""
    return StageSpec(_name(fn, name), RECORD, REQUEST_LINE, fn)


def on_records(fn: Callable[..., Any], *, name: str | None = None) -> StageSpec:
    """A stage on records, before the request builder: ``def f(record) -> record |
    list | None`` (a filter, an enricher), or a general stage receiving and sending
    ``Record`` items (hold, reorder, drop as it likes)."""
    return StageSpec(_name(fn, name), RECORD, RECORD, fn)


def on_requests(fn: Callable[..., Any], *, name: str | None = None) -> StageSpec:
    """A stage on checked requests (``Entry``), after validate: ``def f(entry) ->
    entry | dict | list | None`` or a general stage receiving and sending ``Entry``
    items. A request it rewrites is checked again, and its new bytes are what is
    sent and retried."""
    return StageSpec(_name(fn, name), REQUEST, REQUEST, fn)


def process_results(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    routes: Mapping[str, Any] | None = None,
) -> StageSpec:
    """A result processor: ``def process(joined) -> output | list | None`` (sync or
    async), called with each result joined with its request and record
    (``JoinedResult``); its outputs, not the result lines, go to the sink. It runs
    in the results-to-sink step, so an output is committed with the result it came
    from: exactly once across crashes (a JSONL output).

    ``routes``: further sinks by name (a JSONL path or a ``ResultSink``); an output
    ``Routed(name, value)`` goes to that sink instead (a router: flagged results to
    a file of their own). Their positions are committed in the same ledger step as
    the output's, so they too hold each output once."""
    spec = StageSpec(_name(fn, name), RESULT, OUTPUT, fn)
    spec.routes = dict(routes or {})
    return spec


class Plan:
    """A checked composition, as the runner wires it."""

    def __init__(self, stages: list[StageSpec]) -> None:
        self.stages = stages
        names = [s.name for s in stages]
        validate = names.index("validate")
        chunker = names.index("chunker")
        #: user stages on records, and the builder, between source and validate
        self.before_validate = stages[1:validate]
        #: between validate and the chunker: user stages, dry run, spend guard
        self.after_validate = stages[validate + 1 : chunker]
        results = names.index("results")
        self.processors = [s for s in stages[results + 1 :] if not s.standard]
        self.dry_run = "dry_run" in names
        self.spend_guard = "spend_guard" in names
        self.builder = any(s.output == REQUEST_LINE for s in self.before_validate)
        #: a user stage on the request side: the checkpoint follows ``HeldLines``
        self.tracked = any(not s.standard for s in self.before_validate + self.after_validate)

    @property
    def processor(self) -> StageSpec | None:
        return self.processors[0] if self.processors else None

    def replacement(self, name: str) -> Callable[..., Any] | None:
        """The function that replaces the standard stage ``name``, if any."""
        for spec in self.stages:
            if spec.standard and spec.name == name:
                return spec.fn
        return None


def compose(
    stages: Sequence[StageSpec] | None,
    *,
    dry_run: bool = False,
    spend_guard: bool = False,
    records: bool = False,
) -> Plan:
    """Check ``stages`` and return the plan the runner wires (see the module
    docstring). ``dry_run`` / ``spend_guard``: the configuration asks for them
    (they join a list of user stages only; a full list says itself).
    ``records``: the source can give records (an iterable)."""
    given = [_spec(s) for s in (stages or ())]
    if any(s.standard for s in given):
        full = list(given)
        if full[0] is not SOURCE:
            full.insert(0, SOURCE)
        if full[-1] is not SINK:
            full.append(SINK)
    else:
        full = [
            s
            for s in STANDARD_STAGES
            if (s is not DRY_RUN or dry_run) and (s is not SPEND_GUARD or spend_guard)
        ]
        for spec in given:
            full.insert(_slot(full, spec), spec)
    _check(full, records=records)
    return Plan(full)


def _spec(stage: object) -> StageSpec:
    if isinstance(stage, StageSpec):
        return stage
    raise UsageError(
        f"{stage!r} is not a stage: wrap a function with pipeline.stages.build_requests, "
        "on_records, on_requests or process_results, or list a standard stage "
        "(pipeline.stages.VALIDATE, ...)"
    )


def _slot(full: list[StageSpec], spec: StageSpec) -> int:
    """Where a user stage goes in the standard list: after the stages of its kind."""
    anchor = {RECORD: "source", REQUEST: "validate", RESULT: "results"}.get(spec.input or "")
    if anchor is None:
        raise UsageError(f"stage {spec.name!r} takes {spec.input}s: no place for it in the chain")
    at = [s.name for s in full].index(anchor) + 1
    while at < len(full) and not full[at].standard:
        at += 1
    if spec.input == RECORD:  # records stages before the builder
        while at > 0 and full[at - 1].output == REQUEST_LINE and not full[at - 1].standard:
            at -= 1
    return at


def _check(full: list[StageSpec], *, records: bool) -> None:
    names = [s.name for s in full]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"stage names must be unique in a pipeline: {', '.join(twice)} (name=...)")
    for required in ("validate", *(s.name for s in _CORE)):
        if required not in names:
            raise UsageError(f"the pipeline has no {required!r} stage: every job needs one")
    at = names.index("chunker")
    if names[at : at + 4] != [s.name for s in _CORE]:
        raise UsageError(
            "chunker, submitter, poller and results go together, in that order "
            "(the retry loop joins their ends): put user stages before or after them"
        )
    for before, after in zip(full, full[1:], strict=False):
        gives = before.output
        if before is SOURCE and records and after.input == RECORD:
            gives = RECORD
        if after is SINK and gives == OUTPUT:
            continue
        if gives != after.input:
            raise UsageError(
                f"stage {after.name!r} takes {after.input}s, but the stage before it, "
                f"{before.name!r}, gives {gives}s"
                + (
                    " (a source of records needs a request builder first: "
                    "pipeline.stages.build_requests)"
                    if after.input == RECORD and before is SOURCE
                    else ""
                )
            )
