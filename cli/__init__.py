"""The `modeldrop` command: dispatches to the server, the worker, and the tus upload client."""
