"""Labels for scans: the object image a model trains on, from another tool's reconstruction
or, where no truth exists, from an iterative solver."""
