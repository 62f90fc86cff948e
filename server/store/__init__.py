"""The staging store: upload records, their bytes, running hashes, split-set staging."""
