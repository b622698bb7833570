"""The report's plots say what they show: a title of their own, the quantity and its unit on
the axis or colour bar, the cost as samples processed (the seconds in a plot of their own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import ptycl.eval.plots
from ptycl.eval.evaluate import MATRIX_NAMES, ErrorMatrices
from tests.test_report import _report


@pytest.fixture
def drawn(monkeypatch, tmp_path) -> dict[str, dict]:
    """Every figure ``write_report`` saves: its file name -> its titles and axis labels."""
    from ptycl.train.report import write_report

    figures: dict[str, dict] = {}
    save = ptycl.eval.plots.save_figure

    def recording(fig: Figure, path: Path) -> Path:
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        figures[Path(path).name] = {
            "title": (fig._suptitle.get_text() if fig._suptitle else "") or axes[0].get_title(),
            "ylabel": axes[0].get_ylabel(),
            "colourbar": [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"],
            "lines": [line.get_ydata().tolist() for line in axes[0].get_lines()],
        }
        return save(fig, path)

    monkeypatch.setattr(ptycl.eval.plots, "save_figure", recording)
    matrices = ErrorMatrices(scan_ids=["scan0", "scan1", "scan2"])
    rng = np.random.default_rng(0)
    for i in range(3):
        matrices.columns.append(list(range(i + 1)))
        for name in MATRIX_NAMES:
            matrices.rows[name].append(rng.uniform(0.1, 1.0, i + 1).tolist())
    report = _report(matrices)
    report.costs = [
        {"scan_id": s, "steps": 4, "samples": n, "seconds": t}
        for s, n, t in zip(matrices.scan_ids, [128, 192, 192], [63.0, 182.0, 25.0], strict=True)
    ]
    write_report(report, tmp_path)
    return figures


def test_phase_and_amplitude_plots_have_their_own_titles_and_units(drawn) -> None:
    phase = drawn["phase_offset_free_mae_first_scans.png"]
    amplitude = drawn["amplitude_mae_first_scans.png"]
    assert phase["title"] != amplitude["title"]
    assert "phase MAE" in phase["title"] and "amplitude MAE" in amplitude["title"]
    assert phase["ylabel"] == "offset-free phase MAE (rad)"
    assert amplitude["ylabel"].startswith("amplitude MAE (")
    assert drawn["R_phase_offset_free_mae.png"]["colourbar"] == ["offset-free phase MAE (rad)"]
    assert drawn["R_amplitude_mae.png"]["colourbar"][0].startswith("amplitude MAE (")


def test_cost_is_plotted_as_samples_and_time_apart(drawn) -> None:
    cost, time = drawn["cost_per_scan.png"], drawn["time_per_scan.png"]
    assert cost["lines"] == [[128, 192, 192]] and "samples" in cost["ylabel"]
    assert time["lines"] == [[63.0, 182.0, 25.0]] and "(s" in time["ylabel"]
