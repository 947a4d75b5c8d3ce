"""The backup engine. It imports nothing from Airflow, so it runs on a bare database host."""
