"""Routing rules: which pipeline runs on a series and where its results go."""

from dicomnode.rules.engine import Check, RoutingDecision, RuleOutcome, check_rule, route
from dicomnode.rules.facts import SeriesFacts, orientation_of

__all__ = ["Check", "RoutingDecision", "RuleOutcome", "SeriesFacts", "check_rule",
           "orientation_of", "route"]
