"""Benchmarks: the figures devstack-gate is judged on, each against a reference
measured in the same run (``python -m bench``; see README "Benchmarks")."""
