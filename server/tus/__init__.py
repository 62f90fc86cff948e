"""The tus 1.0 protocol: header parsing, the request handler, and reading a PATCH body."""
