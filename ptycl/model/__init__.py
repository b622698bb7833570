"""PtychoNN-style models: one diffraction frame in, named amplitude and phase out."""

from ptycl.model.ptychonn import ModelOutput, PtychoNN, build_model

__all__ = ["ModelOutput", "PtychoNN", "build_model"]
