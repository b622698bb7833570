"""How often a long watch run redraws its dense tables and plots.

``metrics.json`` is written after every scan: it holds only the cells evaluated, so it grows
linearly. The dense ``R_*.csv`` tables and the plots grow with the square of the scans seen
so after every scan they would in the end take longer than the scans. They are redrawn once at least ``spacing`` times their last drawing's
duration has passed: after every scan while drawing is quick, at most 1/spacing of the time
once it is not, and always at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportCadence:
    spacing: float = 10.0  # wall time between drawings, in units of the last one's duration
    next_due: float = 0.0  # monotonic seconds

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def drew(self, started: float, ended: float) -> None:
        self.next_due = ended + self.spacing * (ended - started)
