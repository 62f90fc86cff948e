"""modeldrop's finalize worker: verifies finished uploads and installs them into the models directory."""
