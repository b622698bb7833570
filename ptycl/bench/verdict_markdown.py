"""The verdict of ``ptycl bench continual`` as markdown: the criteria first, then every
strategy over the seeds beside the constant patch."""

from __future__ import annotations

import math


def _interval(value: dict | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    mean, low, high = value["mean"], value.get("low"), value.get("high")
    if low is None or high is None or not math.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def verdict_markdown(verdict: dict) -> str:
    streams = ", ".join(f"{s['simulate_seed']}/{s['run_seed']}" for s in verdict["streams"])
    lines = [
        f"Paired streams: {verdict['seeds']} (simulation seed / run seed: {streams}). "
        f"Error: {verdict['error']} on each scan's held-out region, mean over the scans of "
        "the final row; ratios are exp(mean log-ratio) over the streams with the 95% "
        "t-interval in brackets.",
        "",
    ]
    if verdict.get("command"):
        lines += [f"Command: `{verdict['command']}`", ""]
    lines += ["| criterion | target | measured | met |", "|---|---|---|---|"]
    for c in verdict["criteria"]:
        met = {True: "yes", False: "**NO**", None: "not evaluated"}[c["met"]]
        lines.append(f"| {c['name']} | {c['target']} | {c['reason']} | {met} |")
    lines += [
        "",
        "| strategy | final error (rad) | just learned (rad) | final / cumulative | "
        "phase skill, final | phase skill, just learned | phase skill, unseen scans | "
        "amplitude skill, final | final/best (forgetting) | samples, last scan | "
        "samples, total | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in verdict["strategies"].items():
        if "samples_total" not in row:
            lines.append(f"| {name} | {_interval(row['final_error'])} |" + " |" * 10)
            continue
        lines.append(
            f"| {name} | {_interval(row['final_error'])} | {_interval(row['learning_error'])} "
            f"| {_interval(row['over_reference'])} | {_interval(row['phase_skill'], 2)} "
            f"| {_interval(row['phase_skill_learned'], 2)} "
            f"| {_interval(row['unseen_phase_skill'], 2)} "
            f"| {_interval(row['amplitude_skill'], 2)} | {_interval(row['final_over_best'], 2)} "
            f"| {row['samples_last_scan']} | {row['samples_total']} "
            f"| {row['seconds_mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"
