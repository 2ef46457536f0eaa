"""Tests of the guided-diffusion checkpoint converter and checkpoint readers."""

from conftest import load_fixture
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.convert import config_from_flags, from_guided_diffusion, load_state_dict
from diffseg_jax.convert.guided_diffusion import convert_entry, torch_key
from diffseg_jax.nn import GroupNorm32, UNetModel, conv, dense

PARAM = "param/"

# The constructor flags of the adm_unet_a reference case.
UNET_FLAGS = {
    "image_size": 32,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 6,
    "num_res_blocks": 2,
    "attention_resolutions": [2, 4],
    "dropout": 0.0,
    "channel_mult": [1, 2, 2],
    "conv_resample": True,
    "dims": 2,
    "num_classes": 10,
    "use_checkpoint": False,
    "use_fp16": False,
    "num_heads": 1,
    "num_head_channels": 16,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
}


@pytest.fixture(scope="module")
def unet_fixture(fixtures_dir):
  """``(state_dict, constructor flags, params converted from the fixture npz file)``."""
  arrays, meta = load_fixture(fixtures_dir, "adm_unet_a")
  state = {k[len(PARAM):]: v for k, v in arrays.items() if k.startswith(PARAM)}
  _, params = from_guided_diffusion(fixtures_dir / "adm_unet_a.npz", meta["config"])
  return state, meta["config"], params


def _assert_identical_trees(a, b):
  flat_a = flax.traverse_util.flatten_dict(a)
  flat_b = flax.traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for path, leaf in flat_a.items():
    assert leaf.dtype == flat_b[path].dtype == jnp.float32, path
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]), err_msg=str(path))


def test_checkpoint_formats_give_identical_params(unet_fixture, tmp_path):
  torch = pytest.importorskip("torch")
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  state, flags, reference = unet_fixture
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "model.pt")
  safetensors_numpy.save_file(state, tmp_path / "model.safetensors")
  np.savez(tmp_path / "plain.npz", **state)
  sources = [
      tmp_path / "model.pt",
      str(tmp_path / "model.safetensors"),
      tmp_path / "plain.npz",
      state,
      {k: torch.from_numpy(v) for k, v in state.items()},
  ]
  for source in sources:
    _, params = from_guided_diffusion(source, flags)
    _assert_identical_trees(params, reference)


def test_converted_layouts(unet_fixture):
  state, _, params = unet_fixture
  flat = flax.traverse_util.flatten_dict(params)
  assert len(flat) == len(state)
  np.testing.assert_array_equal(
      flat[("input_blocks_1_0", "in_layers_2", "kernel")],
      state["input_blocks.1.0.in_layers.2.weight"].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      flat[("input_blocks_4_1", "qkv", "kernel")], state["input_blocks.4.1.qkv.weight"][..., 0].T
  )
  np.testing.assert_array_equal(
      flat[("time_embed_0", "kernel")], state["time_embed.0.weight"].T
  )
  np.testing.assert_array_equal(
      flat[("out_0", "scale")], state["out.0.weight"]
  )
  np.testing.assert_array_equal(flat[("label_emb", "embedding")], state["label_emb.weight"])


@pytest.mark.parametrize("case", ["adm_unet_a", "adm_classifier_a", "adm_superres_a"])
def test_torch_key_inverts_the_mapping(fixtures_dir, case):
  arrays, _ = load_fixture(fixtures_dir, case)
  for key, value in arrays.items():
    if key.startswith(PARAM):
      path, _ = convert_entry(key[len(PARAM):], value)
      assert torch_key(path) == key[len(PARAM):]


def test_mismatches_are_reported_together(unet_fixture):
  state, flags, _ = unet_fixture
  broken = dict(state)
  del broken["input_blocks.1.0.emb_layers.1.bias"]
  broken["middle_block.1.extra.weight"] = np.zeros((3, 4), np.float32)
  broken["output_blocks.2.1.qkv.weight"] = state["output_blocks.2.1.qkv.weight"][:96]
  with pytest.raises(ValueError) as error:
    from_guided_diffusion(broken, flags)
  message = str(error.value)
  assert "missing from the checkpoint (1):" in message
  assert "input_blocks.1.0.emb_layers.1.bias (flax input_blocks_1_0/emb_layers_1/bias" in message
  assert "unexpected in the checkpoint (1):" in message
  assert "middle_block.1.extra.weight (shape (3, 4))" in message
  assert "mis-shaped (1):" in message
  assert (
      "output_blocks.2.1.qkv.weight: checkpoint (96, 64, 1) -> flax output_blocks_2_1/qkv/kernel"
      " (64, 96), model expects (64, 192)"
  ) in message


def test_flag_errors():
  flags = dict(UNET_FLAGS)
  with pytest.raises(ValueError, match=r"unknown unet flags \['num_chanels'\]; valid flags: .*"
                     r"'num_head_channels'"):
    config_from_flags({**flags, "num_chanels": 3})
  with pytest.raises(ValueError, match="only dims=2"):
    config_from_flags({**flags, "dims": 3})
  with pytest.raises(ValueError, match=r"missing required unet flags \['num_res_blocks'\]"):
    config_from_flags({k: v for k, v in flags.items() if k != "num_res_blocks"})
  with pytest.raises(ValueError, match="unknown model 'vae'"):
    config_from_flags(flags, model="vae")
  config = config_from_flags({**flags, "use_fp16": True, "use_checkpoint": True})
  assert "use_fp16" not in config and "dims" not in config


def test_constructor_flags_become_model_fields():
  config = config_from_flags(UNET_FLAGS)
  assert config.attention_resolutions == (2, 4)
  assert config.channel_mult == (1, 2, 2)
  assert config.num_classes == 10 and config.num_head_channels == 16
  classifier = config_from_flags({"image_size": 32, "in_channels": 3, "model_channels": 32,
                                  "out_channels": 10, "num_res_blocks": 1,
                                  "attention_resolutions": [4]}, model="classifier")
  assert classifier.pool == "adaptive" and classifier.channel_mult == (1, 2, 4, 8)
  assert "num_classes" not in classifier


def test_script_flags_match_constructor_flags():
  script = {
      "image_size": 32,
      "num_channels": 32,
      "num_res_blocks": 2,
      "channel_mult": "1,2,2",
      "attention_resolutions": "16,8",
      "num_heads": 1,
      "num_head_channels": 16,
      "use_scale_shift_norm": True,
      "resblock_updown": True,
      "learn_sigma": True,
      "class_cond": False,
      "diffusion_steps": 4000,
      "noise_schedule": "cosine",
  }
  assert config_from_flags(script).to_dict() == config_from_flags(
      {**UNET_FLAGS, "num_classes": None}
  ).to_dict()


def test_script_defaults():
  unet = config_from_flags({"learn_sigma": True, "class_cond": True})
  assert unet.to_dict() == {
      "image_size": 64, "in_channels": 3, "model_channels": 128, "out_channels": 6,
      "num_res_blocks": 2, "attention_resolutions": (4, 8), "dropout": 0.0,
      "channel_mult": (1, 2, 3, 4), "conv_resample": True, "num_classes": 1000,
      "num_heads": 4, "num_head_channels": -1, "num_heads_upsample": -1,
      "use_scale_shift_norm": True, "resblock_updown": False,
      "use_new_attention_order": False,
  }
  classifier = config_from_flags({"image_size": 128, "classifier_depth": 4}, model="classifier")
  assert classifier.channel_mult == (1, 1, 2, 3, 4)
  assert classifier.attention_resolutions == (4, 8, 16)
  assert (classifier.model_channels, classifier.num_res_blocks) == (128, 4)
  assert (classifier.out_channels, classifier.num_head_channels) == (1000, 64)
  assert classifier.pool == "attention" and classifier.resblock_updown
  superres = config_from_flags({"large_size": 256, "small_size": 64}, model="superres")
  assert (superres.image_size, superres.channel_mult) == (256, (1, 1, 2, 2, 4, 4))
  assert superres.attention_resolutions == (16, 32)
  with pytest.raises(ValueError, match=r"no default channel_mult for image size 48"):
    config_from_flags({"num_channels": 64, "image_size": 48})


def test_load_state_dict_inputs(tmp_path):
  torch = pytest.importorskip("torch")
  state = load_state_dict({"a.weight": torch.ones(2, 3, dtype=torch.bfloat16),
                           "b.bias": np.arange(3, dtype=np.float32)})
  assert state["a.weight"].dtype == np.float32 and state["a.weight"].shape == (2, 3)
  np.testing.assert_array_equal(state["b.bias"], [0, 1, 2])
  with pytest.raises(FileNotFoundError):
    load_state_dict(tmp_path / "absent.pt")
  (tmp_path / "model.ckpt").write_bytes(b"")
  with pytest.raises(ValueError, match="unsupported checkpoint format"):
    load_state_dict(tmp_path / "model.ckpt")


def _torch_and_flax(torch_module, flax_module, key, x_torch, x_flax):
  """Runs a torch layer and the flax layer holding its converted parameters."""
  params = {}
  for name, value in torch_module.state_dict().items():
    path, array = convert_entry(f"{key}.{name}", value.detach().numpy())
    params[path[-1]] = array
  expected = torch_module(x_torch).detach().numpy()
  return flax_module.apply({"params": params}, x_flax), expected


def test_layouts_reproduce_torch_layers():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  image = torch.randn(2, 64, 6, 6)
  image_nhwc = jnp.asarray(image.numpy().transpose(0, 2, 3, 1))
  for torch_conv, flax_conv in [
      (torch.nn.Conv2d(64, 8, 3, padding=1), conv(8, 3)),
      (torch.nn.Conv2d(64, 8, 3, stride=2, padding=1), conv(8, 3, stride=2)),
      (torch.nn.Conv2d(64, 8, 1), conv(8, 1)),
  ]:
    got, expected = _torch_and_flax(torch_conv, flax_conv, "op", image, image_nhwc)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, atol=1e-5)

  norm = torch.nn.GroupNorm(32, 64)
  torch.nn.init.normal_(norm.weight)
  torch.nn.init.normal_(norm.bias)
  got, expected = _torch_and_flax(norm, GroupNorm32(), "norm", 3 * image + 1, 3 * image_nhwc + 1)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, atol=1e-5)

  tokens = torch.randn(2, 64, 5)
  tokens_ntc = jnp.asarray(tokens.numpy().transpose(0, 2, 1))
  got, expected = _torch_and_flax(torch.nn.Conv1d(64, 12, 1), dense(12), "qkv", tokens, tokens_ntc)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1), expected, atol=1e-5)

  vectors = torch.randn(3, 64)
  got, expected = _torch_and_flax(
      torch.nn.Linear(64, 12), dense(12), "time_embed.0", vectors, jnp.asarray(vectors.numpy())
  )
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_converted_params_fit_the_model(unet_fixture):
  _, flags, params = unet_fixture
  assert flags == UNET_FLAGS
  config = config_from_flags(flags)
  shapes = jax.eval_shape(
      UNetModel(**config).init,
      jax.random.key(0),
      jnp.zeros((1, 32, 32, 3)),
      jnp.zeros(1),
      y=jnp.zeros(1, jnp.int32),
  )["params"]
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
