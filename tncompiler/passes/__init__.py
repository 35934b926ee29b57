"""Rewrites of diagrams: simplification, fusion and lowering; `pipeline.py` lists them in order."""
