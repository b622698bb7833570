"""Rehearsal stores: a uniform sample of every frame seen, with DER outputs, for replay."""
