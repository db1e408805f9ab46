"""The dry-run stage: sample each new request shape against the Messages API before
any request of that shape may be submitted in a batch.

The service checks batch requests only when the batch runs, so a mistake in a
million-request job would come back a day later as a million errored results. This
stage groups entries by ``Entry.signature`` (the shape key of ``check_entry``) and
sends the first ``config.dry_run_samples`` requests of each new shape to

* ``count-tokens``: ``POST /v1/messages/count_tokens`` (free; checks the shape), or
* ``messages``: ``POST /v1/messages`` with the request's own params and a tiny
  ``max_tokens`` (catches what count_tokens cannot; costs a few tokens),

and holds the other entries of that shape until the verdict. Entries of shapes
already checked keep flowing meanwhile: the calls run in tasks of a task group the
stage owns and closes before it returns (it leaves no task behind).

A failed sample goes to rejects with the service's own message. What a failure means
for the rest of its shape is ``config.dry_run_policy``:

* ``reject-shape``: they are rejected, pointing at the failed sample, with no further
  calls;
* ``continue``: they go on to be submitted;
* ``abort``: the stage raises ``DryRunAbortedError`` before any entry of that shape
  passed.

Only an answer about the request is a verdict: 400, 413, 422, and a 404 whose message
names a request field (the service answers an unknown model with 404 ``model: ...``).
Any other 404 (no such endpoint: a wrong ``--base-url``), 401 or 403 (the API key) is
a configuration error that would condemn every request alike, so it fails the stage
with the service's error class and a hint, instead of rejecting the whole input.

A shape's key holds its tool names. A job whose requests each bring tools of their own
(a tool-use evaluation, say) would make every request a new shape, and the job would
move at the dry run's rate. So once one model, set of fields and block kinds has come
with ``MAX_TOOL_SETS`` tool sets, every further tool set of it shares one more shape
(its tool definitions were each checked by the local schema).

Before its first sample, a shape's model is looked up in the service's own list
(``GET /v1/models``, one call per job, then ``GET /v1/models/{name}`` once per name
the list does not hold, for aliases) when the client can ask for it: a model the
service does not offer, or has retired, fails the sample with a ``not_found_error``
naming it, without a call for the request, and the policy above decides for its shape.
A service without that list is not asked again.

Measured input tokens replace the sample's approximation (``Entry.input_tokens``,
``Entry.cost_usd``), and calibrate the estimate of the shape's later entries (scaled
by the measured / approximated ratio of its samples).

Order: entries of one shape leave in the order they came; entries of a held shape
may leave after later entries of other shapes, and after Rejects and non-final
Flush markers. Entries of one custom_id never overtake one another: an entry whose
custom_id a held entry carries waits behind it (and counts as held), and leaves
right after it, so the ledger sees every custom_id's lines in input order and the
first line wins a duplicate custom_id whatever the checks' timing (``Ledger.claim``). A final Flush (the source ended) waits until every held shape is
released. Held entries are bounded by ``max_held``: when full, the stage stops
reading (backpressure), and shapes still collecting samples are judged on the
samples already taken.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Protocol

import anyio
import msgspec

from .._errors import APIError, APIStatusError, DryRunAbortedError
from .._pricing import DEFAULT_PRICES, PriceTable, cache_write_factor
from ..api._schema import approx_input_tokens, reshaped, signature_tools
from ._dryrun_calls import (
    COUNT_TOKENS_PATH,
    DRY_RUN_MAX_TOKENS,
    DRY_RUN_THINKING_BUDGET,
    REQUEST_FAULTS,
    RateLimiter,
    count_tokens_body,
    is_setup_fault,
    messages_body,
    setup_error,
)
from ._items import Entry, Flush, Reject, RejectError, Watermark

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

    from .._config import PipelineConfig
    from ..api._types import Message, ModelInfo

__all__ = (
    "DEFAULT_MAX_HELD",
    "DRY_RUN_MAX_TOKENS",
    "DRY_RUN_THINKING_BUDGET",
    "DryRunClient",
    "DryRunMeter",
    "DryRunStatistics",
    "MAX_TOOL_SETS",
    "ModelsClient",
    "count_tokens_body",
    "dry_run",
    "messages_body",
)

logger = logging.getLogger("pipeline.dry_run")
#: token counts up to this are priced inline as they are (larger ones are clamped by
#: ``PriceTable.estimate_cost_usd``)
_PLAIN = 2**31

#: Entries held (samples included) while their shape is checked, at most.
DEFAULT_MAX_HELD = 4096
#: Tool sets sampled apart per model, fields and block kinds; the rest share a shape.
MAX_TOOL_SETS = 16

Item = Entry | Reject | Flush | Watermark


class DryRunClient(Protocol):
    """What the stage needs of ``pipeline.api.Client``."""

    async def count_tokens(self, params: bytes) -> int: ...

    async def create_message(self, params: bytes) -> Message: ...


class ModelsClient(Protocol):
    """What a ``DryRunClient`` may also have: the stage then checks models against the
    service's list (``pipeline.api.Client`` has it)."""

    async def list_models(self) -> list[ModelInfo]: ...

    async def get_model(self, model: str) -> ModelInfo: ...


class DryRunStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the dry run's work."""

    mode: str
    #: API calls made, all modes
    calls: int = 0
    count_tokens_calls: int = 0
    messages_calls: int = 0
    #: distinct signatures seen, and how their checks ended
    shapes: int = 0
    shapes_passed: int = 0
    shapes_failed: int = 0
    #: samples the service refused
    samples_failed: int = 0
    #: entries rejected because their shape's sample failed (``reject-shape``)
    shape_rejects: int = 0
    #: entries held right now, waiting for their shape's verdict
    held: int = 0


class DryRunMeter:
    """The live counters of one dry-run stage; ``statistics()`` takes a snapshot."""

    def __init__(self, mode: str = "") -> None:
        self.mode = mode
        self.count_tokens_calls = 0
        self.messages_calls = 0
        self.shapes = 0
        self.shapes_passed = 0
        self.shapes_failed = 0
        self.samples_failed = 0
        self.shape_rejects = 0
        self.held = 0

    def statistics(self) -> DryRunStatistics:
        return DryRunStatistics(
            mode=self.mode,
            calls=self.count_tokens_calls + self.messages_calls,
            count_tokens_calls=self.count_tokens_calls,
            messages_calls=self.messages_calls,
            shapes=self.shapes,
            shapes_passed=self.shapes_passed,
            shapes_failed=self.shapes_failed,
            samples_failed=self.samples_failed,
            shape_rejects=self.shape_rejects,
            held=self.held,
        )


# -------------------------------------------------------------------------- the stage


class _Status(enum.Enum):
    PENDING = 0
    PASSED = 1
    FAILED = 2


_WAITING = RejectError("", "")  # outcome of a sample whose check is not done


class _Shape:
    """One signature: its samples and held entries until the verdict."""

    __slots__ = (
        "approx",
        "base",
        "failure",
        "held",
        "measured",
        "open",
        "next",
        "outcomes",
        "running",
        "samples",
        "shared",
        "status",
        "unresolved",
    )

    def __init__(self) -> None:
        self.status = _Status.PENDING
        self.open = True  # still taking samples
        self.samples: list[Entry] = []
        #: per sample: None (passed), its RejectError, or _WAITING
        self.outcomes: list[RejectError | None] = []
        self.unresolved = 0
        self.next = 0  # index of the next sample to check
        self.running = False  # a task is checking this shape's samples, one at a time
        self.held: list[Entry] = []
        self.failure: Reject | None = None  # the first failed sample
        self.approx = 0  # approximated input tokens of the passed samples
        self.measured = 0  # their measured input tokens
        #: with tools: the key shared by its model, fields and block kinds (``_new_key``)
        self.base: str | None = None
        self.shared = False  # the shape of every tool set past ``MAX_TOOL_SETS``


class _DryRun:
    """The state of one running dry-run stage (see the module docstring)."""

    def __init__(
        self,
        client: DryRunClient,
        config: PipelineConfig,
        limiter: RateLimiter,
        max_held: int,
        meter: DryRunMeter,
        prices: PriceTable,
    ) -> None:
        self._client = client
        self._mode = config.dry_run
        self._policy = config.dry_run_policy
        self._samples = config.dry_run_samples
        self._limiter = limiter
        self._max_held = max_held
        self._meter = meter
        self._prices = prices
        #: the prices as ``(input, output)`` tuples: ``_price`` inlines the estimate
        self._rates = prices.rates()
        self._shapes: dict[str, _Shape] = {}
        #: shared key -> tool sets sampled apart so far, and how many of them passed
        self._tool_sets: dict[str, int] = {}
        self._tool_sets_passed: dict[str, int] = {}
        self._pending: set[_Shape] = set()
        #: custom_id of each held entry -> the later entries of that custom_id, which
        #: wait behind it (bounded by ``max_held``, as they count as held)
        self._blocked: dict[str, list[Entry]] = {}
        self._lock = anyio.Lock()
        self._changed = anyio.Event()
        self._failure: BaseException | None = None
        self._tg: TaskGroup | None = None
        self._send: ObjectSendStream[list[Item]] | None = None
        #: the checkpoint cap last sent downstream
        self._cap = Watermark()
        has_models = hasattr(client, "list_models") and hasattr(client, "get_model")
        self._models_client: ModelsClient | None = client if has_models else None  # type: ignore[assignment]
        #: model name -> None (offered) or why not; filled from the service's list
        self._models: dict[str, RejectError | None] | None = None
        self._models_lock = anyio.Lock()

    async def run(
        self, receive: ObjectReceiveStream[list[Item]], send: ObjectSendStream[list[Item]]
    ) -> None:
        async with receive, send:
            self._send = send
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    async for items in receive:
                        await self._take(items)
                    await self._drain()
                except Exception as exc:  # surfaces once, unwrapped, below
                    self._fail(exc)
            # Downstream closed (e.g. the spend guard stopped): a clean stop, which
            # closing our receive end passes on upstream.
            if self._failure is not None and not isinstance(
                self._failure, anyio.BrokenResourceError
            ):
                raise self._failure

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    # -- main loop -----------------------------------------------------------------

    async def _take(self, items: list[Item]) -> None:
        out: list[Item] = []
        shapes, judge, pending = self._shapes, self._judge, _Status.PENDING
        blocked = self._blocked
        for item in items:
            if type(item) is Entry:
                if not blocked or item.custom_id not in blocked:
                    shape = shapes.get(item.signature)
                    if shape is not None and shape.status is not pending:
                        out.append(judge(shape, item))  # the common case: a judged shape
                        continue
                # its shape is new or pending, or its custom_id is held: it would be held
                if self._meter.held >= self._max_held:
                    out = await self._emit(out)
                    await self._wait_room()
                ready = self._admit(item)
                if ready is not None:
                    out.append(ready)
            elif type(item) is Flush and item.final:
                out = await self._emit(out)
                await self._drain()
                out.append(item)
            else:
                out.append(item)
        await self._emit(out)

    async def _emit(self, out: list[Item]) -> list[Item]:
        if out:
            assert self._send is not None
            async with self._lock:
                await self._send.send(self._capped(out))
        return []

    def _capped(self, out: list[Item]) -> list[Item]:
        """``out`` behind a ``Watermark`` when the earliest held entry changed: what
        overtakes a held entry must not carry the checkpoint past it (call under
        the send lock, just before sending)."""
        earliest: Entry | None = None
        for shape in self._pending:
            first = shape.samples[0] if shape.samples else shape.held[0] if shape.held else None
            if first is not None and (earliest is None or first.line < earliest.line):
                earliest = first
        if earliest is None:
            cap = Watermark()
        else:
            cap = Watermark(earliest.offset if earliest.offset >= 0 else None, earliest.line - 1)
        if cap == self._cap:
            return out
        old, self._cap = self._cap, cap
        if old.line is not None and (cap.line is None or cap.line > old.line):
            # a raised (or lifted) cap goes after the entries it lets through: a stage
            # that cuts the list short (the spend guard) keeps the lower cap in force
            return [*out, cap]
        return [cap, *out]

    def _admit(self, entry: Entry) -> Item | None:
        """The entry to forward now, or None when it is held for its shape's verdict
        or behind a held entry of its custom_id."""
        followers = self._blocked.get(entry.custom_id)
        if followers is not None:
            followers.append(entry)
            self._meter.held += 1
            return None
        shape = self._shapes.get(entry.signature)
        if shape is None:
            key, base = self._new_key(entry.signature)
            shape = self._shapes.get(key)
            if shape is None:
                shape = self._shapes[key] = _Shape()
                shape.base, shape.shared = base, key == base
                self._pending.add(shape)
                self._meter.shapes += 1
        if shape.status is not _Status.PENDING:
            return self._judge(shape, entry)
        self._meter.held += 1
        self._blocked[entry.custom_id] = []
        if shape.open and len(shape.samples) < self._samples:
            shape.samples.append(entry)
            shape.outcomes.append(_WAITING)
            shape.unresolved += 1
            if not shape.running:
                shape.running = True
                assert self._tg is not None
                self._tg.start_soon(self._sampler, shape)
        else:
            shape.held.append(entry)
        return None

    def _new_key(self, signature: str) -> tuple[str, str | None]:
        """The shape key of a signature not seen as a shape yet, and, when it has
        tools, the key shared by its model, fields and block kinds. The key is the
        signature itself, or, past ``MAX_TOOL_SETS`` tool sets, the shared one."""
        if not signature_tools(signature):
            return signature, None
        shared = reshaped(signature, tools="*")
        seen = self._tool_sets.get(shared, 0)
        if seen < MAX_TOOL_SETS:
            self._tool_sets[shared] = seen + 1
            return signature, shared
        if seen == MAX_TOOL_SETS:
            self._tool_sets[shared] = seen + 1
            logger.info(
                "dry run: more than %d tool sets for one model, fields and block kinds "
                "(%s): the further ones share one sample",
                MAX_TOOL_SETS,
                shared,
            )
        return shared, shared

    def _policy_for(self, shape: _Shape) -> str:
        """The failure policy of ``shape``. A failed sample of the shared tool-set
        shape speaks for its own tools only, once a tool set of its kind has passed:
        it is rejected alone and the others go on. If none passed, the failure is the
        job's (a model it may not use, say) and the configured policy holds."""
        if shape.shared and self._tool_sets_passed.get(shape.base or "", 0):
            return "continue"
        return self._policy

    def _judge(self, shape: _Shape, entry: Entry) -> Item:
        """A non-sample entry of a shape with a verdict."""
        if shape.failure is not None and self._policy_for(shape) == "reject-shape":
            self._meter.shape_rejects += 1
            return Reject(entry.line, entry.custom_id, self._pointer(shape.failure), entry.end)
        if shape.measured and shape.approx:
            tokens = _approx(entry) * shape.measured // shape.approx
            self._price(entry, max(tokens, 1))
        return entry

    @staticmethod
    def _pointer(failed: Reject) -> RejectError:
        return RejectError(
            failed.error.type,
            f"dry run of this request's shape failed on line {failed.line} "
            f"(custom_id {failed.custom_id!r}): {failed.error.message}",
        )

    def _price(self, entry: Entry, input_tokens: int) -> None:
        if (
            input_tokens == entry.input_tokens
            and entry.cost_usd > 0
            and self._prices is DEFAULT_PRICES
        ):
            return  # the validate stage's estimate (default prices) still holds
        entry.input_tokens = input_tokens
        factor = entry.input_factor
        if factor < 0:
            factor = entry.input_factor = cache_write_factor(entry.raw)
        rate = self._rates.get(entry.model)
        max_tokens = entry.max_tokens
        if rate is None:
            entry.cost_usd = 0.0
        elif 0 <= input_tokens <= _PLAIN and 0 <= max_tokens <= _PLAIN:
            # PriceTable.estimate_cost_usd, inlined (the same floats: it runs per entry)
            entry.cost_usd = (input_tokens * rate[0] * factor + max_tokens * rate[1]) / 1_000_000
        else:  # counts arithmetic must clamp first
            entry.cost_usd = self._prices.estimate_cost_usd(
                entry.model, input_tokens, max_tokens, input_factor=factor
            )

    # -- waiting -------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_room(self) -> None:
        while self._meter.held >= self._max_held:
            await self._close_pending()
            if self._meter.held >= self._max_held:
                await self._changed.wait()

    async def _drain(self) -> None:
        """Wait until no shape is pending, judging open ones on the samples taken."""
        while self._pending:
            await self._close_pending()
            if self._pending:
                await self._changed.wait()

    async def _close_pending(self) -> None:
        for shape in list(self._pending):
            shape.open = False
            await self._release_if_done(shape)

    # -- samples -------------------------------------------------------------------

    async def _sampler(self, shape: _Shape) -> None:
        """Check a shape's samples one after the other (so a failure under
        ``reject-shape`` spares the calls of the samples after it)."""
        try:
            while shape.next < len(shape.samples):
                shape.next += 1
                await self._sample(shape, shape.next - 1)
            shape.running = False
            await self._release_if_done(shape)
        except Exception as exc:
            self._fail(exc)

    async def _sample(self, shape: _Shape, index: int) -> None:
        entry = shape.samples[index]
        if not self._skip(shape):
            await self._limiter.acquire()
        if self._skip(shape):
            assert shape.failure is not None
            outcome: RejectError | None = self._pointer(shape.failure)
            self._meter.shape_rejects += 1
        else:
            outcome = await self._check(shape, entry)
        shape.outcomes[index] = outcome
        shape.unresolved -= 1
        if outcome is not None and shape.failure is None:
            shape.failure = Reject(entry.line, entry.custom_id, outcome, entry.end)
            if self._policy_for(shape) == "abort":
                message = f"{outcome.type}: {outcome.message}"
                raise DryRunAbortedError(entry.line, entry.custom_id, message)

    def _skip(self, shape: _Shape) -> bool:
        return shape.failure is not None and self._policy_for(shape) == "reject-shape"

    async def _model_problem(self, model: str) -> RejectError | None:
        """Why the service does not offer ``model`` (None: it does, or it cannot tell)."""
        client = self._models_client
        if client is None:
            return None
        async with self._models_lock:
            if self._models is None:
                try:
                    offered = await client.list_models()
                except APIError as exc:  # no such list here: the samples will tell
                    logger.warning("dry run: GET /v1/models failed, models not checked: %s", exc)
                    self._models_client = None
                    return None
                self._models = dict.fromkeys([m.id for m in offered if m.lifecycle != "retired"])
            if model not in self._models:
                self._models[model] = await self._look_up(client, model)
            return self._models[model]

    @staticmethod
    async def _look_up(client: ModelsClient, model: str) -> RejectError | None:
        """A name the list does not hold: an alias, retired, or unknown."""
        try:
            info = await client.get_model(model)
        except APIStatusError as exc:
            if exc.status_code != 404:
                return None
            return RejectError(
                "not_found_error", f"model: {model} is not a model of the service (GET /v1/models)"
            )
        if info.lifecycle == "retired":
            return RejectError("not_found_error", f"model: {model} is retired (GET /v1/models)")
        return None

    async def _check(self, shape: _Shape, entry: Entry) -> RejectError | None:
        """One dry-run call: None when the service accepted the request."""
        unknown = await self._model_problem(entry.model)
        if unknown is not None:
            self._meter.samples_failed += 1
            return unknown
        try:
            if self._mode == "messages":
                body = messages_body(entry.raw)
                self._meter.messages_calls += 1
                tokens = (await self._client.create_message(body)).usage.input_tokens
            else:
                body = count_tokens_body(entry.raw)
                self._meter.count_tokens_calls += 1
                tokens = await self._client.count_tokens(body)
        except msgspec.DecodeError as exc:
            self._meter.samples_failed += 1
            return RejectError("invalid_request_error", f"request is not valid JSON: {exc}")
        except APIStatusError as exc:
            if is_setup_fault(exc):
                path = "/v1/messages" if self._mode == "messages" else COUNT_TOKENS_PATH
                raise setup_error(exc, f"POST {path}") from exc
            if exc.status_code not in REQUEST_FAULTS:
                raise
            self._meter.samples_failed += 1
            return RejectError(exc.error_type, exc.api_message)
        shape.approx += _approx(entry)
        shape.measured += tokens
        self._price(entry, tokens)
        return None

    def _decided(self, shape: _Shape) -> bool:
        if shape.status is not _Status.PENDING or shape.unresolved:
            return False
        return (
            not shape.open
            or len(shape.samples) >= self._samples
            or (shape.failure is not None and self._policy_for(shape) == "reject-shape")
        )

    async def _release_if_done(self, shape: _Shape) -> None:
        if not self._decided(shape):
            return
        assert self._send is not None
        async with self._lock:
            # Decided again under the lock that orders sends (a sample may have come
            # in meanwhile); the status flips under it too, so an entry of this shape
            # admitted from now on is sent after the held ones.
            if not self._decided(shape):
                return
            shape.status = _Status.PASSED if shape.failure is None else _Status.FAILED
            self._pending.discard(shape)
            if shape.failure is None:
                self._meter.shapes_passed += 1
                if shape.base is not None and not shape.shared:
                    passed = self._tool_sets_passed.get(shape.base, 0)
                    self._tool_sets_passed[shape.base] = passed + 1
            else:
                self._meter.shapes_failed += 1
            released = len(shape.samples) + len(shape.held)
            out: list[Item] = []
            for entry, outcome in zip(shape.samples, shape.outcomes, strict=True):
                out.append(
                    entry
                    if outcome is None
                    else Reject(entry.line, entry.custom_id, outcome, entry.end)
                )
                self._unblock(entry, out)
            for entry in shape.held:
                out.append(self._judge(shape, entry))
                self._unblock(entry, out)
            shape.samples, shape.outcomes, shape.held = [], [], []
            if out:
                await self._send.send(self._capped(out))
        self._meter.held -= released
        self._notify()

    def _unblock(self, entry: Entry, out: list[Item]) -> None:
        """``entry`` leaves: the later entries of its custom_id that waited behind it
        follow it in ``out``, each judged, or held again (its own shape is pending, or
        an earlier one of them was held so)."""
        followers = self._blocked.pop(entry.custom_id, None)
        if not followers:
            return
        self._meter.held -= len(followers)
        for follower in followers:
            ready = self._admit(follower)
            if ready is not None:
                out.append(ready)


def _approx(entry: Entry) -> int:
    return entry.input_tokens if entry.input_tokens >= 0 else approx_input_tokens(entry.raw)


async def dry_run(
    receive: ObjectReceiveStream[list[Item]],
    send: ObjectSendStream[list[Item]],
    /,
    *,
    client: DryRunClient,
    config: PipelineConfig,
    clock: Callable[[], float] = anyio.current_time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    max_held: int = DEFAULT_MAX_HELD,
    meter: DryRunMeter | None = None,
    prices: PriceTable = DEFAULT_PRICES,
) -> None:
    """The dry-run stage (see the module docstring): validate -> dry_run -> spend_guard.

    ``config.dry_run`` picks the mode (``off`` passes everything through untouched),
    ``config.dry_run_samples`` the samples per shape, ``config.dry_run_policy`` what a
    failed sample means for its shape, ``config.dry_run_rate`` the calls per second.
    ``clock``/``sleep`` drive the rate limit (inject virtual ones in tests); ``meter``
    receives the live counters (``meter.statistics()``).
    """
    if max_held < 1:
        raise ValueError(f"max_held must be >= 1, got {max_held}")
    meter = meter if meter is not None else DryRunMeter()
    meter.mode = config.dry_run
    if config.dry_run == "off":
        async with receive, send:
            try:
                async for items in receive:
                    await send.send(items)
            except anyio.BrokenResourceError:
                pass  # downstream stopped: so do we
        return
    limiter = RateLimiter(config.dry_run_rate, clock, sleep)
    stage = _DryRun(client, config, limiter, max_held, meter, prices)
    await stage.run(receive, send)
