"""Run: a case (a series' instances, or a NIfTI file) → load → segment → encode → write.

``case`` is the one case runner, ``batch`` drives it over folders (``dicomnode process``),
``worker`` over queued jobs (``dicomnode serve``).
"""

from dicomnode.run.case import Case, CaseRunner, CaseStep, CaseSummary

__all__ = ["Case", "CaseRunner", "CaseStep", "CaseSummary"]
