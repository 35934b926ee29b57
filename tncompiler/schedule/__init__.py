"""The schedule: every decision about the generated code, as typed ops (ops.py), made by build.py."""
