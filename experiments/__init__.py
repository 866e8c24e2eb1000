"""Reproductions of the papers' experiments; each script is one command (see docs/RESULTS.md)."""
