"""The continual claim's verdict over paired seeds: the criteria, declared here before any
run, and the numbers each stream gives them.

Every strategy ran on the same streams (one simulation seed and one run seed each), so a
comparison between two strategies is one ratio per stream, summarised as the mean log-ratio
with its 95% t-interval (``ptycl.eval.paired``). Errors are the offset-free phase MAE over
each scan's held-out region, averaged over the scans of the final row of R.

The criteria (issue 20):

0. The models learn (the precondition of the others): cumulative's final phase skill against
   the constant patch (mean over the scans), lower end of the interval >= 0.5. Where it
   fails, criteria 1 and 3 compare models that predict little more than each scan's median
   patch, and their reasons say so.
1. DER++ against cumulative: final error ratio, upper end of the interval <= 1.15, at a
   last-scan cost (forward samples) <= 1/3 of cumulative's, DER++'s cost per scan flat
   (within 5% from the second scan on, once the store can replay).
2. Incremental forgetting: on the scans before the last, final / best error (best: the
   lowest before the end), its geometric mean over those scans per stream; lower end of the
   interval >= 1.5.
3. DER++ at least as good as full replay at the same cost: DER++ / full replay final error,
   upper end of the interval <= 1.05 (non-inferiority within 5%), their total samples within
   5% of each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ptycl.eval.paired import Interval, log_ratio_interval, mean_interval, ratio_of_logs
from ptycl.train.report import RunReport

ERROR = "phase_offset_free_mae"  # the error every criterion reads
LEARNED_SKILL_MIN = 0.5
DERPP_OVER_CUMULATIVE_MAX = 1.15
LAST_SCAN_COST_MAX = 1 / 3
FLAT_TOLERANCE = 0.05
FORGETTING_MIN = 1.5
DERPP_OVER_REPLAY_MAX = 1.05
SAME_COST_TOLERANCE = 0.05


@dataclass(frozen=True)
class StreamResult:
    """What one strategy's run on one stream gives the verdict."""

    final_error: float  # mean of R's last row (offset-free phase MAE, rad)
    learning_error: float  # mean of R's diagonal: each scan just learned
    final_over_best: list[float]  # scans before the last: final / best before the end
    phase_skill: float | None  # final average skill against the constant patch
    phase_skill_learned: float | None  # diagonal average skill
    amplitude_skill: float | None
    constant_error: float  # mean over scans of the constant patch's error
    unseen_phase_skill: float | None  # mean over the unseen scans of each domain
    samples: list[int]  # forward samples per scan
    seconds: float  # training seconds, all scans

    @classmethod
    def of(cls, report: RunReport) -> StreamResult:
        R = report.matrix(ERROR)
        final, T = R[-1], len(R)
        best = [np.nanmin(R[j : T - 1, j]) for j in range(T - 1)]
        skill = report.summary.get("phase_skill", {})
        constants = report.constant(ERROR) or {}
        return cls(
            final_error=float(np.nanmean(final)),
            learning_error=float(np.nanmean(np.diag(R))),
            final_over_best=[float(final[j] / b) for j, b in enumerate(best)],
            phase_skill=skill.get("final_average"),
            phase_skill_learned=skill.get("diagonal_average"),
            amplitude_skill=report.summary.get("amplitude_skill", {}).get("final_average"),
            constant_error=float(np.mean([constants[s] for s in report.scan_ids])),
            unseen_phase_skill=float(np.mean([u["phase_skill"] for u in report.unseen.values()]))
            if report.unseen
            else None,
            samples=[int(c["samples"]) for c in report.costs],
            seconds=float(sum(c["seconds"] for c in report.costs)),
        )


Streams = Sequence[Mapping[str, StreamResult]]  # one {strategy: result} per seed


def _ratio(streams: Streams, a: str, b: str) -> Interval:
    return log_ratio_interval(
        [s[a].final_error for s in streams], [s[b].final_error for s in streams]
    )


def _criterion(name: str, target: str, measured: dict, met: bool | None, why: str) -> dict:
    met = None if met is None else bool(met)
    return {"name": name, "target": target, "measured": measured, "met": met, "reason": why}


def criteria(streams: Streams) -> list[dict]:
    """The criteria on ``streams``; a criterion whose strategies did not all run is reported
    as not evaluated (``met`` None)."""
    have = set.intersection(*(set(s) for s in streams)) if streams else set()
    out = []
    vacuous = ""
    skills = [s["cumulative"].phase_skill for s in streams if "cumulative" in s]
    if "cumulative" in have and None not in skills:
        learned = _models_learn(skills)
        out.append(learned)
        if not learned["met"]:
            vacuous = " (vacuous: the models do not learn, see models_learn)"
    if {"derpp", "cumulative"} <= have:
        out.append(_derpp_vs_cumulative(streams, vacuous))
    if "incremental" in have:
        out.append(_incremental_forgetting(streams))
    if {"derpp", "full_replay"} <= have:
        out.append(_derpp_vs_full_replay(streams, vacuous))
    named = {c["name"] for c in out}
    for name, needs in NEEDS.items():
        if name not in named:
            missing = ", ".join(sorted(needs - have))
            out.append(_criterion(name, "", {}, None, f"not evaluated: {missing} did not run"))
    return out


def _models_learn(skills: list[float]) -> dict:
    skill = mean_interval(skills)
    return _criterion(
        "models_learn",
        f"cumulative's final phase skill: lower end >= {LEARNED_SKILL_MIN}",
        {"phase_skill": skill.to_dict()},
        math.isfinite(skill.low) and skill.low >= LEARNED_SKILL_MIN,
        f"cumulative's final phase skill {skill.text(2)}",
    )


def _derpp_vs_cumulative(streams: Streams, vacuous: str) -> dict:
    ratio = _ratio(streams, "derpp", "cumulative")
    last = [s["derpp"].samples[-1] / s["cumulative"].samples[-1] for s in streams]
    steady = [s["derpp"].samples[1:] or s["derpp"].samples for s in streams]
    spread = max(max(v) / min(v) - 1 for v in steady)
    parts = {
        "error ratio upper end <= 1.15": ratio.high <= DERPP_OVER_CUMULATIVE_MAX,
        "last-scan cost <= 1/3": max(last) <= LAST_SCAN_COST_MAX,
        "cost per scan flat": spread <= FLAT_TOLERANCE,
    }
    return _criterion(
        "derpp_vs_cumulative",
        f"DER++/cumulative final error: upper end <= {DERPP_OVER_CUMULATIVE_MAX}; "
        f"last-scan samples <= 1/3 of cumulative's; samples per scan flat within "
        f"{FLAT_TOLERANCE:.0%} from the second scan",
        {
            "error_ratio": ratio.to_dict(),
            "last_scan_cost_ratio": max(last),
            "cost_per_scan_spread": spread,
        },
        math.isfinite(ratio.high) and all(parts.values()),
        _reason(parts, f"error ratio {ratio.text()}") + vacuous,
    )


def _incremental_forgetting(streams: Streams) -> dict:
    logs = [float(np.mean(np.log(s["incremental"].final_over_best))) for s in streams]
    forgetting = ratio_of_logs(logs)
    per_scan = [
        ratio_of_logs([math.log(s["incremental"].final_over_best[j]) for s in streams])
        for j in range(len(streams[0]["incremental"].final_over_best))
    ]
    parts = {"lower end >= 1.5": forgetting.low >= FORGETTING_MIN}
    return _criterion(
        "incremental_forgetting",
        f"incremental final/best on the scans before the last (geometric mean over "
        f"them): lower end >= {FORGETTING_MIN}",
        {"final_over_best": forgetting.to_dict(), "per_scan": [p.to_dict() for p in per_scan]},
        math.isfinite(forgetting.low) and all(parts.values()),
        _reason(parts, f"final/best {forgetting.text()}"),
    )


def _derpp_vs_full_replay(streams: Streams, vacuous: str) -> dict:
    ratio = _ratio(streams, "derpp", "full_replay")
    costs = [sum(s["derpp"].samples) / sum(s["full_replay"].samples) for s in streams]
    parts = {
        "error ratio upper end <= 1.05": ratio.high <= DERPP_OVER_REPLAY_MAX,
        "same cost": max(abs(c - 1) for c in costs) <= SAME_COST_TOLERANCE,
    }
    return _criterion(
        "derpp_vs_full_replay",
        f"DER++/full replay final error: upper end <= {DERPP_OVER_REPLAY_MAX} at total "
        f"samples within {SAME_COST_TOLERANCE:.0%}",
        {"error_ratio": ratio.to_dict(), "total_cost_ratio": costs},
        math.isfinite(ratio.high) and all(parts.values()),
        _reason(parts, f"error ratio {ratio.text()}") + vacuous,
    )


NEEDS = {
    "models_learn": {"cumulative"},
    "derpp_vs_cumulative": {"derpp", "cumulative"},
    "incremental_forgetting": {"incremental"},
    "derpp_vs_full_replay": {"derpp", "full_replay"},
}


def _reason(parts: dict[str, bool], measured: str) -> str:
    failed = [name for name, ok in parts.items() if not ok]
    return f"{measured}; " + (f"failed: {', '.join(failed)}" if failed else "all parts met")


def strategy_table(streams: Streams, reference: str = "cumulative") -> dict[str, dict]:
    """Per strategy, over the seeds: means with intervals of the final and learning errors,
    the skills, incremental-style forgetting, its final error / ``reference``'s, and costs."""
    names = [n for n in streams[0] if all(n in s for s in streams)]
    table = {}
    for name in names:
        runs = [s[name] for s in streams]

        def interval(values: list[float | None]) -> dict | None:
            finite = [v for v in values if v is not None and math.isfinite(v)]
            return mean_interval(finite).to_dict() if len(finite) == len(values) else None

        table[name] = {
            "final_error": interval([r.final_error for r in runs]),
            "learning_error": interval([r.learning_error for r in runs]),
            "phase_skill": interval([r.phase_skill for r in runs]),
            "phase_skill_learned": interval([r.phase_skill_learned for r in runs]),
            "amplitude_skill": interval([r.amplitude_skill for r in runs]),
            "unseen_phase_skill": interval([r.unseen_phase_skill for r in runs]),
            "final_over_best": ratio_of_logs(
                [float(np.mean(np.log(r.final_over_best))) for r in runs]
            ).to_dict()
            if runs[0].final_over_best
            else None,
            "over_reference": _ratio(streams, name, reference).to_dict()
            if reference in names
            else None,
            "samples_last_scan": runs[0].samples[-1],
            "samples_total": sum(runs[0].samples),
            "seconds_mean": float(np.mean([r.seconds for r in runs])),
        }
    table["constant patch"] = {
        "final_error": mean_interval([s[names[0]].constant_error for s in streams]).to_dict()
    }
    return table
