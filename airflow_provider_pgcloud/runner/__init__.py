"""The backup engine. It imports nothing from Airflow, so it runs on a bare database host.

Layers, top down: the command line (cli/) turns arguments into dataclasses; the steps
(steps.py, run in one process by backup.py, snapshot_backup.py and barman_hook.py on the
phases.py skeleton) take a backup; below them the source of tar members (sources/), the chunk
plan (plan.py), the archive, its manifest and codecs, the upload, the stores (storage/) and
the layout of keys in a store (layout.py). The Airflow operators call the same steps.
"""
