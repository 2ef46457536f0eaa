"""Shared pytest fixtures.

Real data and reference outputs live outside the repository; tests reach them only through
the environment variables below and skip, saying why, where they are absent:

* ``DIFFSEG_DATA_DIR``: the datasets in their original formats (one folder per dataset).
* ``DIFFSEG_FIXTURES_DIR``: outputs of the original PyTorch implementations (``<case>.npz`` and
  ``<case>.json``) for parity tests.
"""

import json
import os
import pathlib

import numpy as np
import pytest


def _dir_from_env(var: str) -> pathlib.Path:
  value = os.environ.get(var)
  if not value:
    pytest.skip(f"{var} is not set; point it at the folder to run this test.")
  path = pathlib.Path(value)
  if not path.is_dir():
    pytest.skip(f"{var}={value} is not a directory.")
  return path


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return _dir_from_env("DIFFSEG_FIXTURES_DIR")


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  return _dir_from_env("DIFFSEG_DATA_DIR")


def load_fixture(fixtures_dir: pathlib.Path, case: str):
  """Returns ``(arrays, meta)`` of a reference case: the npz as a dict and the parsed json."""
  npz_path = fixtures_dir / f"{case}.npz"
  json_path = fixtures_dir / f"{case}.json"
  if not npz_path.exists():
    pytest.skip(f"fixture {npz_path} is missing.")
  with np.load(npz_path) as npz:
    arrays = {k: npz[k] for k in npz.files}
  meta = json.loads(json_path.read_text())
  return arrays, meta


def pytest_configure(config):
  # Test helpers (tiny_config, train_worker) are imported as top-level modules.
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  # The XLA settings the command line uses (before any JAX computation).
  from diffseg_jax import platform
  platform.configure_xla_cpu()
