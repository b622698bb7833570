"""Watch mode: scans discovered in a beamline directory, followed while written, trained on
in segments as frames arrive, reconstructed when unlabelled (``ptycl watch``)."""
