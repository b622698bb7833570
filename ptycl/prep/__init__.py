"""Frames to model inputs (``frames``) and object images to label patches (``patches``)."""
