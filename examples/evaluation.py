"""Evaluation: a few hundred test cases with expected answers, scored from the job's results.

Run (no API key needed: the embedded emulator answers):

    python examples/evaluation.py --workdir /tmp/eval --cases 300

One composed pipeline: a request builder (``build_requests``) makes each case's
request (custom_id ``case-N``), and a result processor (``process_results``)
scores each result, joined with its case, by exact match: ``results.jsonl``
holds one verdict per case (in any order; exactly once, even across crashes).
The report counts passes, fails and errors, and ``scores.jsonl`` holds the
verdicts in case order.

Re-running the same command is safe: the report and ``scores.jsonl`` are rebuilt
from ``results.jsonl``, the job's durable output, so a finished job gives the
same report again without sending anything, and an interrupted one (Ctrl-C, a
crash) is resumed first. A workdir holds one job (``job.json``): asking it for
other cases is an error; ``--fresh`` discards the job and starts a new one.

About "expected": the cases are sums ("What is 17 + 25?"). A real model can answer
them; the emulator's model is a deterministic fake that answers every prompt with
words picked by a hash. So on the emulator, three cases in four expect the fake
model's own answer (computable, see ``pipeline.emulator._model.reply_text``) and
one in four expects the true sum: the report then shows 75% and both paths of the
scoring. With ``ANTHROPIC_API_KEY`` set, every case expects the true sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig, read_status
from pipeline.stages import build_requests, process_results

if TYPE_CHECKING:
    from pipeline.api import ResultLine
    from pipeline.stages import JoinedResult

MODEL = "claude-haiku-4-5"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


class WorkdirInUseError(Exception):
    """The workdir holds a job with other requests than the ones asked for."""


def make_cases(n: int, *, on_emulator: bool) -> list[dict[str, Any]]:
    """``n`` cases: id, question, expected answer."""
    cases = []
    for i in range(n):
        a, b = (i * 37) % 100, (i * 61) % 100
        question = f"What is {a} + {b}? Answer with the number only."
        expected = str(a + b)
        if on_emulator and i % 4:
            # the emulator's answer key: an emulator internal, there is no public name for it
            from pipeline.emulator._model import reply_text

            expected = " ".join(reply_text(question))
        cases.append({"id": f"case-{i}", "question": question, "expected": expected})
    return cases


def request(case: dict[str, Any]) -> dict[str, Any]:
    """The batch request entry for one case."""
    return {
        "custom_id": case["id"],
        "params": {
            "model": MODEL,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": case["question"]}],
        },
    }


def claim_workdir(path: Path, cases: list[dict[str, Any]]) -> None:
    """A workdir holds one job: ``job.json`` names its cases; other cases are an error."""
    data = _encoder.encode(cases)
    if path.exists():
        if path.read_bytes() != data:
            raise WorkdirInUseError(
                f"{path.parent} holds a job with other cases: run with --fresh to discard "
                "it, or use another --workdir"
            )
        return
    path.write_bytes(data)


def discard_job(workdir: Path) -> None:
    """``--fresh``: delete this example's files in ``workdir`` (nothing else)."""
    for path in [*workdir.glob("results.*"), workdir / "job.json", workdir / "scores.jsonl"]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def answer_text(line: ResultLine) -> str | None:
    """The model's text, or None when the request did not succeed (only a
    succeeded result carries a message)."""
    message = getattr(line.result, "message", None)
    if message is None:
        return None
    return "".join(b.get("text", "") for b in message.content).strip()


def score(joined: JoinedResult) -> dict[str, Any]:
    """The result processor: one case's verdict."""
    case, text = joined.record, answer_text(joined.result)
    expected = case["expected"]
    verdict = "errored" if text is None else "passed" if text == expected else "failed"
    return {"id": case["id"], "verdict": verdict, "got": text, "expected": expected}


def report(cases: list[dict[str, Any]], results: Path, scores: Path) -> dict[str, int]:
    """The verdicts in case order to ``scores``; the report. A case without a
    verdict (a job stopped early) counts as errored."""
    found = {v["id"]: v for v in map(_decoder.decode, results.read_bytes().splitlines())}
    counts = {"cases": len(cases), "passed": 0, "failed": 0, "errored": 0}
    with scores.open("wb") as out:
        for case in cases:
            doc = found.get(case["id"]) or {
                "id": case["id"],
                "verdict": "errored",
                "got": None,
                "expected": case["expected"],
            }
            counts[doc["verdict"]] += 1
            out.write(_encoder.encode(doc) + b"\n")
    return counts


async def evaluate(
    workdir: Path, n: int, *, api_key: str | None = None, fresh: bool = False
) -> dict[str, int]:
    """Run (or resume) the evaluation; the report ``{"cases", "passed", "failed",
    "errored"}``, also for a job that had already finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh:
        discard_job(workdir)
    cases = make_cases(n, on_emulator=api_key is None)
    claim_workdir(workdir / "job.json", cases)
    results, state = workdir / "results.jsonl", workdir / "results.jsonl.state"
    # a finished job has all its results in results.jsonl already: nothing to run
    if not (state.exists() and (await read_status(state)).finished):
        pipeline = Pipeline(
            cases,
            results,
            state=state,
            stages=[build_requests(request), process_results(score)],
            config=PipelineConfig(linger_seconds=0.2),
            api_key=api_key,
        )
        await pipeline.run()  # a new job, or the interrupted one resumed
    return report(cases, results, workdir / "scores.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/evaluation"))
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument(
        "--fresh", action="store_true", help="discard the workdir's job and start a new one"
    )
    args = parser.parse_args()
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    try:
        report = anyio.run(
            lambda: evaluate(args.workdir, args.cases, api_key=api_key, fresh=args.fresh)
        )
    except WorkdirInUseError as exc:
        parser.error(str(exc))
    share = 100 * report["passed"] / max(report["cases"], 1)
    print(
        f"{report['passed']}/{report['cases']} passed ({share:.0f}%), {report['failed']} failed, "
        f"{report['errored']} errored; per case: {args.workdir / 'scores.jsonl'}"
    )


if __name__ == "__main__":
    main()
