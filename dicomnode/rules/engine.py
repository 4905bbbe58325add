"""Routing: which rules match a series, and why (or why not).

Every condition yields a line of explanation, so ``dicomnode rules test`` can tell a radiology IT
engineer exactly which attribute kept a series from a rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dicomnode.config import RoutingConfig, RuleConfig, RuleMatch
from dicomnode.rules.facts import SeriesFacts


@dataclass(frozen=True)
class Check:
    """One condition of a rule against a series."""

    condition: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class RuleOutcome:
    rule: RuleConfig
    checks: tuple[Check, ...]

    @property
    def matched(self) -> bool:
        return all(check.passed for check in self.checks)

    def explain(self) -> str:
        lines = [f"rule {self.rule.name!r}: {'MATCH' if self.matched else 'no match'}"]
        lines += [f"  [{'x' if c.passed else ' '}] {c.condition}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


@dataclass(frozen=True)
class RoutingDecision:
    """The rules that fire for a series (in config order) and every rule's outcome."""

    selected: tuple[RuleOutcome, ...]
    outcomes: tuple[RuleOutcome, ...]

    @property
    def pipelines(self) -> list[tuple[str, RuleConfig]]:
        """(pipeline, rule) pairs to run, without repeating a pipeline."""
        seen: dict[str, RuleConfig] = {}
        for outcome in self.selected:
            for pipeline in outcome.rule.pipelines:
                seen.setdefault(pipeline, outcome.rule)
        return list(seen.items())

    def as_json(self, volume: bool = True) -> dict[str, Any]:
        """The decision as ``dicomnode rules test --json`` and ``POST /api/v1/rules/test``
        report it: what fires (pipelines, result destinations, where the series itself is
        forwarded), then every rule's conditions. A series that is not a ``volume`` is not
        segmented, only forwarded where a matching rule says so (as the router does)."""
        fired = [o for o in self.selected if volume or o.rule.forward]
        return {
            "matched_rules": [o.rule.name for o in fired],
            "pipelines": [pipeline for pipeline, _ in self.pipelines] if volume else [],
            "destinations": sorted({d for o in fired for d in o.rule.destinations})
            if volume else [],
            "forward": sorted({d for o in fired for d in o.rule.forward}),
            "explanation": [o.explain() for o in self.outcomes],
            "rules": [{"name": o.rule.name, "matched": o.matched,
                       "checks": [vars(c) for c in o.checks]} for o in self.outcomes],
        }


def _one_of(name: str, wanted: list[str], actual: str) -> Check:
    ok = actual.upper() in {w.upper() for w in wanted}
    return Check(name, ok, f"{actual or '(empty)'!r} {'in' if ok else 'not in'} {wanted}")


def _regex(name: str, pattern: str, actual: str) -> Check:
    ok = re.search(pattern, actual, flags=re.IGNORECASE) is not None
    return Check(name, ok, f"{actual or '(empty)'!r} {'matches' if ok else 'does not match'} "
                           f"/{pattern}/")


def check_rule(match: RuleMatch, facts: SeriesFacts) -> tuple[Check, ...]:
    """Evaluate every condition that ``match`` sets (unset conditions are not listed)."""
    checks: list[Check] = []
    if match.modality:
        checks.append(_one_of("modality", match.modality, facts.modality))
    if match.body_part is not None:
        checks.append(_regex("body_part", match.body_part, facts.body_part_examined))
    if match.series_description is not None:
        checks.append(_regex("series_description", match.series_description,
                             facts.series_description))
    if match.protocol_name is not None:
        checks.append(_regex("protocol_name", match.protocol_name, facts.protocol_name))
    image_type = {v.upper() for v in facts.image_type}
    for value in match.image_type_contains:
        ok = value.upper() in image_type
        checks.append(Check("image_type_contains", ok,
                            f"{value!r} {'in' if ok else 'not in'} {list(facts.image_type)}"))
    for value in match.image_type_excludes:
        ok = value.upper() not in image_type
        checks.append(Check("image_type_excludes", ok,
                            f"{value!r} {'not in' if ok else 'in'} {list(facts.image_type)}"))
    if match.orientation:
        checks.append(_one_of("orientation", list(match.orientation), facts.orientation))
    if match.slices is not None:
        low, high = match.slices.min, match.slices.max
        ok = facts.slices >= low and (high is None or facts.slices <= high)
        checks.append(Check("slices", ok, f"{facts.slices} {'within' if ok else 'outside'} "
                                          f"[{low}, {high if high is not None else '∞'}]"))
    if match.calling_ae_title:
        checks.append(_one_of("calling_ae_title", match.calling_ae_title, facts.calling_ae_title))
    return tuple(checks)


def route(routing: RoutingConfig, facts: SeriesFacts) -> RoutingDecision:
    """Apply the rules in order; ``first`` mode keeps the first match, ``all`` keeps every one."""
    outcomes = tuple(RuleOutcome(rule, check_rule(rule.match, facts)) for rule in routing.rules)
    matched = [o for o in outcomes if o.matched]
    selected = matched[:1] if routing.mode == "first" else matched
    return RoutingDecision(selected=tuple(selected), outcomes=outcomes)
