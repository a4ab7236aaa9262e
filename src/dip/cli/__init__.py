"""The ``dip`` command: one module per sub-command (``cmd_*``), each defining ``register(subparsers)``.

The top layer: may import every package. Command modules import the light layers at load time and
the heavy ones (numba planner, torch) inside the function that runs the command."""
