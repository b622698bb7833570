"""Continual training: one model kept current over a stream of scans."""
