"""How far a label (an iterative reconstruction) is from the truth, where the scan can say
anything: on the illuminated disc of every patch the model would be trained on.

Both images are cut into patches at the scan's positions (``prep.patches.cut_patches``, so
each on its own grid) and compared on the truth probe's illuminated support. Phase is scored
offset-free: one global offset for the scan, the amplitude-weighted circular mean of the
difference, is removed first (the unmeasurable global phase). Amplitude is compared as is
(its scale is fixed by the label's referencing). Beside each error, that of the constant
object (the truth's median amplitude and circular mean phase on the same pixels) says what
the figure means: a label is worth training on only well below it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ptycl.io.records import ObjectImage
from ptycl.prep.patches import cut_patches, illuminated_support


@dataclass(frozen=True)
class LabelErrors:
    amplitude_mae: float
    phase_mae: float  # radians, global offset removed
    constant_amplitude_mae: float
    constant_phase_mae: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def label_errors(label: ObjectImage, truth: ObjectImage, positions_m: np.ndarray) -> LabelErrors:
    """Errors of ``label`` against ``truth`` (which carries its probe) on the illuminated area
    of the patches at ``positions_m``; ValueError if a patch leaves either image."""
    if truth.probe is None:
        raise ValueError("scoring a label needs the truth's probe (its illuminated area)")
    size = min(truth.probe.shape)
    support = illuminated_support(truth.probe, truth.pixel_m, truth.pixel_m, size)
    ours = cut_patches(label, positions_m, size)[:, support].astype(np.complex128)
    true = cut_patches(truth, positions_m, size)[:, support].astype(np.complex128)
    offset = np.angle(np.sum(ours * np.conj(true)))
    phase_error = np.abs(np.angle(ours * np.conj(true) * np.exp(-1j * offset)))
    true_offset = np.angle(np.sum(true))
    return LabelErrors(
        amplitude_mae=float(np.mean(np.abs(np.abs(ours) - np.abs(true)))),
        phase_mae=float(np.mean(phase_error)),
        constant_amplitude_mae=float(np.mean(np.abs(np.abs(true) - np.median(np.abs(true))))),
        constant_phase_mae=float(np.mean(np.abs(np.angle(true * np.exp(-1j * true_offset))))),
    )
