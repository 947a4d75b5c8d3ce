"""Airflow discovers the provider through its entry point, under its real distribution name."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys


def test_entry_point_names_the_installed_distribution():
    [entry] = [
        ep for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_pgcloud")
    ]
    info = entry.load()()
    distribution = importlib.metadata.distribution(info["package-name"])
    assert distribution.metadata["Name"] == info["package-name"] == "airflow-provider-pgcloud"
    assert info["versions"] == [distribution.version]


def test_airflow_lists_the_provider(tmp_path):
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path))
    listed = subprocess.run(
        [sys.executable, "-c",
         "import importlib, json; from airflow.providers_manager import ProvidersManager as P;"
         "info = P().providers['airflow-provider-pgcloud'].data;"
         "[importlib.import_module(m) for k in ('operators', 'hooks') for e in info[k]"
         " for m in e['python-modules']];"
         "print(json.dumps(info))"],
        env=env, capture_output=True, text=True, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout.strip().splitlines()[-1])
    modules = [m for entry in info["operators"] for m in entry["python-modules"]]
    assert "airflow_provider_pgcloud.operators.backup" in modules
    assert "schema" not in listed.stderr.lower(), listed.stderr  # it validated


def test_engine_never_imports_airflow():
    code = (
        "import sys, airflow_provider_pgcloud.runner.cli, airflow_provider_pgcloud.runner.session;"
        "print([m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
