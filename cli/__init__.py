"""The `modeldrop` command: dispatches to the server, the worker, and the tus upload client."""

# The one place the version is written: both distributions (setup.cfg, cli/setup.cfg) and the server read it.
__version__ = "0.2.0"
