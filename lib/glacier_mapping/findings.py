"""The paper's findings as named, testable claims, and their verdicts for one run.

Every claim the book tests is a :class:`Claim`: the paper's statement and its source, the
comparison that tests it here and the kind of test. A chapter measures the effect with its
interval (:mod:`glacier_mapping.uncertainty`), lists the models the measurement rests on that had
not converged (:mod:`glacier_mapping.convergence`), and :func:`judge` turns that into a
:class:`Finding` with one of three verdicts:

- **holds**: the whole interval lies on the claim's side of its margin;
- **fails**: the whole interval lies on the other side;
- **inconclusive**: the interval straddles the margin (within noise), there is no interval (too
  few seeds, tiles or regions), a model behind it had not converged, or the claim is about
  absolute accuracy and the benchmark is the synthetic stand-in, whose absolute IoUs say nothing
  about the real one.

Chapters write their findings to ``outputs/<profile>/findings/<chapter>.json``; the "Results at a
glance" page collects them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glacier_mapping.store import atomic_write_json
from glacier_mapping.uncertainty import LEVEL, Estimate

VERDICTS: tuple[str, ...] = ("holds", "fails", "inconclusive")
#: Kinds of test: the effect exceeds the margin; the effect stays within +-margin; an absolute
#: level exceeds the margin (testable on the real benchmark only).
KINDS: tuple[str, ...] = ("greater", "within", "level")


@dataclass(frozen=True)
class Claim:
    """One of the paper's findings and how this book tests it.

    Attributes:
        key: Short identifier.
        chapter: Notebook stem of the chapter that tests it.
        statement: The paper's finding, paraphrased.
        source: Where the statement comes from (tags of ``shared/paper/FACTS.md``).
        test: The comparison made here, in words; the effect's sign is such that positive
            supports the claim.
        kind: One of :data:`KINDS`.
        margin: The effect must exceed it (``greater``, ``level``) or stay within +-margin
            (``within``).
        unit: Unit of the effect.
        compares_training: The effect compares differently trained models, so it needs models
            of at least two seeds per arm: a difference between single training runs may be the
            seed's doing.
    """

    key: str
    chapter: str
    statement: str
    source: str
    test: str
    kind: str = "greater"
    margin: float = 0.0
    unit: str = "IoU"
    compares_training: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Claim {self.key!r}: kind={self.kind!r} is not one of {KINDS}.")


@dataclass(frozen=True)
class Finding:
    """A claim's verdict in one run, with the evidence behind it."""

    key: str
    chapter: str
    statement: str
    source: str
    test: str
    verdict: str
    reason: str
    value: float
    low: float
    high: float
    unit: str
    method: str
    n: int
    models: list[str] = field(default_factory=list)
    unconverged: list[str] = field(default_factory=list)

    def interval(self) -> str:
        """The effect and its interval, without the method (e.g. ``+0.060 (+0.050 to +0.074)``)."""
        if not math.isfinite(self.value):
            return "not measured"
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"{self.value:+.3f} ({self.low:+.3f} to {self.high:+.3f})"
        return f"{self.value:+.3f} (no interval)"

    def evidence(self) -> str:
        """The effect and its interval in one phrase."""
        if not math.isfinite(self.value):
            return "not measured"
        text = f"{self.value:+.3f}"
        if math.isfinite(self.low) and math.isfinite(self.high):
            text += f" ({LEVEL:.0%} interval {self.low:+.3f} to {self.high:+.3f}; {self.method})"
        else:
            text += f" (no interval: {self.method})"
        return text

    def sentence(self) -> str:
        """One generated sentence: verdict, test, evidence and reason."""
        return (f"**{self.verdict.capitalize()}**: {self.test}: {self.evidence()}. "
                f"{self.reason[0].upper()}{self.reason[1:]}.")


def judge(claim: Claim, estimate: Estimate | None, *, synthetic: bool,
          models: list[str] | None = None, unconverged: list[str] | None = None,
          seeds: int = 1) -> Finding:
    """The verdict on ``claim`` from ``estimate`` (see the module docstring for the rules).

    Args:
        claim: The claim.
        estimate: The measured effect (None: not measured in this run).
        synthetic: Whether the benchmark is the synthetic stand-in.
        models: Names of the models the measurement rests on.
        unconverged: Those of them whose validation IoU had not levelled off.
        seeds: Training seeds per arm behind the estimate (for ``compares_training`` claims).
    """
    models, unconverged = list(models or []), list(unconverged or [])
    estimate = estimate or Estimate(float("nan"), float("nan"), float("nan"), "not measured", 0)
    verdict, reason = _verdict(claim, estimate, synthetic, unconverged, seeds)
    return Finding(
        key=claim.key, chapter=claim.chapter, statement=claim.statement, source=claim.source,
        test=claim.test, verdict=verdict, reason=reason, value=estimate.value,
        low=estimate.low, high=estimate.high, unit=claim.unit, method=estimate.method,
        n=estimate.n, models=models, unconverged=unconverged,
    )


def _verdict(claim: Claim, estimate: Estimate, synthetic: bool, unconverged: list[str],
             seeds: int) -> tuple[str, str]:
    if not math.isfinite(estimate.value):
        return "inconclusive", "not measured in this run"
    blockers = []
    if claim.kind == "level" and synthetic:
        blockers.append("an absolute IoU on the synthetic stand-in says nothing about the "
                        "paper's benchmark; this verdict is computed only on real data")
    if unconverged:
        blockers.append("resting on models whose validation IoU had not levelled off: "
                        + ", ".join(unconverged))
    if claim.compares_training and seeds < 2:
        blockers.append("one training seed per model: the interval covers the choice of test "
                        "tiles, not the seed-to-seed variation of training, which can be as "
                        "large (chapter 04)")
    if not estimate.has_interval:
        blockers.append(f"too few units to estimate the noise ({estimate.method})")
    if blockers:
        return "inconclusive", "; ".join(blockers)
    low, high, margin = estimate.low, estimate.high, claim.margin
    if claim.kind == "within":
        if -margin <= low and high <= margin:
            return "holds", f"the whole interval lies within ±{margin:g}"
        if low > margin or high < -margin:
            return "fails", f"the whole interval lies beyond ±{margin:g}"
        return "inconclusive", f"the interval reaches beyond ±{margin:g} (within noise)"
    if low > margin:
        return "holds", f"the whole interval lies above {margin:g}"
    if high < margin:
        return "fails", f"the whole interval lies below {margin:g}"
    return "inconclusive", f"the interval includes {margin:g} (difference within noise)"


def findings_dir(output_dir: str | Path) -> Path:
    """Where a run's findings are written."""
    return Path(output_dir) / "findings"


def write_findings(output_dir: str | Path, chapter: str, findings: list[Finding]) -> Path:
    """Write a chapter's findings atomically as JSON (NaN written as null)."""
    records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(f).items()} for f in findings]
    return atomic_write_json(findings_dir(output_dir) / f"{chapter}.json",
                             {"chapter": chapter, "findings": records})


def load_findings(output_dir: str | Path) -> list[Finding]:
    """Every chapter's findings of a run, in chapter order."""
    found = []
    for path in sorted(findings_dir(output_dir).glob("*.json")):
        for record in json.loads(path.read_text())["findings"]:
            record = {k: (float("nan") if v is None and k in ("value", "low", "high") else v)
                      for k, v in record.items()}
            found.append(Finding(**record))
    return found


VERDICT_MARKS: dict[str, str] = {"holds": "holds ✓", "fails": "fails ✗",
                                 "inconclusive": "inconclusive ?"}


def findings_markdown(findings: list[Finding]) -> str:
    """A chapter's findings as a Markdown list: verdict, claim, test, evidence, reason, source."""
    if not findings:
        return "No findings."
    return "\n".join(
        f"- **{VERDICT_MARKS[f.verdict]}**: {f.statement}. *Tested as* {f.test}: "
        f"{f.evidence()}. {f.reason[0].upper()}{f.reason[1:]}. <small>Source: {f.source}."
        "</small>"
        for f in findings
    )


def findings_table(findings: list[Finding]) -> object:
    """A chapter's findings for display in a notebook (rendered Markdown, never truncated)."""
    from IPython.display import Markdown

    return Markdown(findings_markdown(findings))


def publish_findings(output_dir: str | Path, chapter: str,
                     findings: list[Finding]) -> list[Finding]:
    """Write a chapter's findings (:func:`write_findings`) and hand them back for display."""
    write_findings(output_dir, chapter, findings)
    return findings
