"""The JSON API beside the tus endpoint: uploads' finalize status."""
