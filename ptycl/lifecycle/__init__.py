"""The run lifecycle shared by ``ptycl train`` and ``ptycl watch``: signals that stop at the
next step, the run's ``config.yaml``, checkpoint save and resume."""
