"""Test suite of airflow_provider_pgcloud (a package so that ``tests.rig`` is importable)."""
