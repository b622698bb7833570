"""Scan files in and out: HDF5 (CXI layout, SWMR streaming) and Zarr v3 groups with the same tree."""
