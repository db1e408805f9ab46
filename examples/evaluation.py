"""Evaluation: a few hundred test cases with expected answers, scored as results stream back.

Run (no API key needed: the embedded emulator answers):

    python examples/evaluation.py --workdir /tmp/eval --cases 300

Each case is one request (custom_id ``case-N``); the results are scored by exact
match as they arrive, through a callback sink, in any order: the custom_id joins a
result to its case, never the position. The report counts passes, fails and
errors, and ``scores.jsonl`` holds one line per case.

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
from pathlib import Path
from typing import Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig
from pipeline.api._types import ResultLine, SucceededResult

MODEL = "claude-3-haiku-20240307"
_encoder = msgspec.json.Encoder()


def make_cases(n: int, *, on_emulator: bool) -> list[dict[str, Any]]:
    """``n`` cases: id, question, expected answer."""
    cases = []
    for i in range(n):
        a, b = (i * 37) % 100, (i * 61) % 100
        question = f"What is {a} + {b}? Answer with the number only."
        expected = str(a + b)
        if on_emulator and i % 4:
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


def answer_text(line: ResultLine) -> str | None:
    """The model's text, or None when the request did not succeed."""
    if not isinstance(line.result, SucceededResult):
        return None
    return "".join(b.get("text", "") for b in line.result.message.content).strip()


async def evaluate(workdir: Path, n: int, *, api_key: str | None = None) -> dict[str, int]:
    """Run the evaluation; the report ``{"cases", "passed", "failed", "errored"}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cases = make_cases(n, on_emulator=api_key is None)
    expected = {c["id"]: c["expected"] for c in cases}
    report = {"cases": n, "passed": 0, "failed": 0, "errored": 0}
    async with await anyio.open_file(workdir / "scores.jsonl", "wb") as scores:

        async def score(line: ResultLine) -> None:
            got = answer_text(line)
            verdict = (
                "errored"
                if got is None
                else "passed"
                if got == expected[line.custom_id]
                else "failed"
            )
            report[verdict] += 1
            doc = {
                "id": line.custom_id,
                "verdict": verdict,
                "got": got,
                "expected": expected[line.custom_id],
            }
            await scores.write(_encoder.encode(doc) + b"\n")

        pipeline = Pipeline(
            (request(c) for c in cases),
            score,
            state=workdir / "evaluation.state",
            config=PipelineConfig(linger_seconds=0.2),
            api_key=api_key,
        )
        await pipeline.run()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/evaluation"))
    parser.add_argument("--cases", type=int, default=300)
    args = parser.parse_args()
    report = anyio.run(
        lambda: evaluate(args.workdir, args.cases, api_key=os.environ.get("ANTHROPIC_API_KEY"))
    )
    share = 100 * report["passed"] / max(report["cases"], 1)
    print(
        f"{report['passed']}/{report['cases']} passed ({share:.0f}%), {report['failed']} failed, "
        f"{report['errored']} errored; per case: {args.workdir / 'scores.jsonl'}"
    )


if __name__ == "__main__":
    main()
