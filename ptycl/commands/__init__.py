"""One module per ``ptycl`` subcommand: its arguments (``add_arguments``) and its wiring
(``main``); the work itself lives in the stage packages below."""
