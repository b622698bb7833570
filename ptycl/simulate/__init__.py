"""The simulated beamline: sample objects, probes, scan paths and the far-field forward model.

``beamline.simulate_scan`` ties them together into one ``SimulatedScan``; ``run`` writes scans.
Submodules are imported where they are used, so ``ptycl --help`` does not pay for them.
"""
