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


def test_a_section_is_not_a_settable_key():
  with pytest.raises(ValueError, match="'data' is a section, not a value") as e:
    config_lib.check_keys(["data"])
  assert "data.image_size" in str(e.value)


def _invalid(changes):
  """The message of validate() on the base config with ``changes`` ({"section.key": value})."""
  config = config_lib.base_config()
  for key, value in changes.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  return str(e.value)


@pytest.mark.parametrize("key", ["batch_size", "num_steps", "log_every", "checkpoint_every"])
def test_validate_requires_positive_train_counts(key):
  assert f"train.{key}=0 must be a positive integer" in _invalid({f"train.{key}": 0})


def test_validate_names_key_value_and_allowed_values():
  assert "sample.sampler='ddmi' must be one of 'ddpm', 'ddim'" in _invalid(
      {"sample.sampler": "ddmi"})
  assert "model.dtype='float16' must be one of 'float32', 'bfloat16'" in _invalid(
      {"model.dtype": "float16"})
  assert "sample.eta=1.5 must be in [0, 1]" in _invalid({"sample.eta": 1.5})
  assert "sample.eta=-0.1 must be in [0, 1]" in _invalid({"sample.eta": -0.1})
  # base_config has one EMA rate: indices -1 (raw params) and 0 only.
  assert "sample.ema_index=1 must be in -1..0" in _invalid({"sample.ema_index": 1})
  assert "sample.class_label=10 must be in -1..9" in _invalid({"sample.class_label": 10})


def test_validate_rejects_variance_settings_that_contradict_learn_sigma():
  message = _invalid({"diffusion.learn_sigma": True, "diffusion.model_var_type": "fixed_large"})
  assert "model_var_type='fixed_large' is not used with diffusion.learn_sigma=True" in message
  assert "set learn_sigma=False" in message
  message = _invalid({"diffusion.model_var_type": "learned_range"})
  assert "diffusion.model_var_type='learned_range' needs" in message
  assert "set diffusion.learn_sigma=True" in message


def test_validate_reports_every_invalid_value_at_once():
  message = _invalid({"train.log_every": 0, "sample.eta": 2.0})
  assert "train.log_every=0" in message and "sample.eta=2.0" in message


def test_validate_accepts_the_edges_of_the_allowed_ranges():
  config = config_lib.base_config()
  config.sample.eta = 1.0
  config.sample.ema_index = -1
  config.sample.class_label = 9
  config.diffusion.learn_sigma = True
  config_lib.validate(config)


def test_validate_checks_the_evaluate_section():
  message = _invalid({"evaluate.features": "vgg", "evaluate.num_reference": -1,
                      "evaluate.nearest_k": 0})
  assert "evaluate.features='vgg' must be one of 'fashion_mnist', 'inception'" in message
  assert "evaluate.num_reference=-1 must be an integer >= 0" in message
  assert "evaluate.nearest_k=0 must be a positive integer" in message
