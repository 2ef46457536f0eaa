"""The config schema: unknown keys fail with the valid ones named, in files and on the CLI."""

import subprocess
import sys

import pytest

from diffseg_jax import config as config_lib


def test_configs_cannot_add_keys():
  config = config_lib.base_config()
  with pytest.raises(AttributeError):
    config.optim.learning_rte = 1.0


def test_check_keys_names_unknown_keys_and_valid_siblings():
  with pytest.raises(ValueError) as e:
    config_lib.check_keys(["optim.learning_rte", "train.batch_size", "nosuch"])
  message = str(e.value)
  assert "'optim.learning_rte'" in message
  assert "optim.learning_rate" in message  # a valid key of that section is listed
  assert "'nosuch'" in message and "model" in message  # top-level sections are listed
  assert "train.batch_size'" not in message  # valid keys are not reported


def test_validate_rejects_hand_built_config_with_unknown_key():
  config = config_lib.base_config().to_dict()
  config["data"]["imge_size"] = 3
  import ml_collections
  with pytest.raises(ValueError, match="data.imge_size"):
    config_lib.validate(ml_collections.ConfigDict(config))


def test_cli_unknown_override_exits_with_valid_keys():
  result = subprocess.run(
      [sys.executable, "-m", "diffseg_jax.main", "--config=tests/tiny_config.py",
       "--workdir=unused", "--config.train.num_step=3"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "train.num_step" in result.stderr
  assert "train.num_steps" in result.stderr
