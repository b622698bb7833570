"""Object images from model outputs: patches stitched by probe position (``stitch``)."""

from ptycl.recon.stitch import CanvasGrid, StitchedObject, patch_window, stitch_patches

__all__ = ["CanvasGrid", "StitchedObject", "patch_window", "stitch_patches"]
