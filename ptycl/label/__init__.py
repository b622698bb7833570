"""Labels for measured scans: the object image a model trains on, where no truth exists."""
