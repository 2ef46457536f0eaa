"""The FID Inception: pytorch-fid's key list, the converter, parity with a PyTorch peer, and the
TF graph's resize."""

import pathlib

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.convert import pytorch_fid
from diffseg_jax.evaluation import features
from diffseg_jax.evaluation import inception

torch = pytest.importorskip("torch")
import torch_inception  # pylint: disable=g-import-not-at-top,wrong-import-position

KEY_LIST = pathlib.Path(__file__).parent / "data" / "pytorch_fid_inception_keys.txt"


def _key_list() -> dict[str, tuple[int, ...]]:
  keys = {}
  for line in KEY_LIST.read_text().splitlines():
    if line and not line.startswith("#"):
      key, shape = line.split()
      keys[key] = tuple(int(d) for d in shape.strip("()").split(",") if d)
  return keys


def test_flax_variables_match_pytorch_fid_key_list():
  expected = {k: s for k, s in _key_list().items() if not k.endswith("num_batches_tracked")}
  flax_keys = {pytorch_fid.torch_key(path): pytorch_fid.torch_shape(path, shape)
               for path, shape in pytorch_fid.expected_variable_shapes().items()}
  assert flax_keys == expected


def test_torch_peer_has_the_key_list():
  state = torch_inception.FIDInception().state_dict()
  assert {k: tuple(v.shape) for k, v in state.items()} == _key_list()


@pytest.fixture(scope="module")
def peer():
  """A torch peer with random weights and BatchNorm statistics calibrated on a batch (so that
  activations stay O(1) through the depth), its converted variables and a test input."""
  torch.manual_seed(0)
  model = torch_inception.FIDInception()
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = 1.0  # running statistics := those of the calibration batch
      with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  model.train()
  with torch.no_grad():
    model(torch.rand(2, 3, 299, 299) * 2 - 1)
  model.eval()
  x = torch.rand(2, 3, 299, 299) * 2 - 1
  with torch.no_grad():
    pool, spatial, logits = model(x)
    logits_no_bias = pool @ model.fc.weight.T
  outputs = {"pool": pool.numpy(), "logits_bias": logits.numpy(),
             "logits": logits_no_bias.numpy(),
             "spatial": spatial.permute(0, 2, 3, 1)[..., :7].reshape(2, -1).numpy()}
  return model, pytorch_fid.from_pytorch_fid(model.state_dict()), x, outputs


@pytest.mark.parametrize("logits_bias", [False, True])
def test_flax_inception_matches_torch_peer(peer, logits_bias):
  _, variables, x, expected = peer
  out = jax.jit(inception.InceptionV3(logits_bias=logits_bias).apply)(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  assert out["spatial"].shape == (2, inception.SPATIAL_DIM)
  for name, key in (("pool", "pool"), ("spatial", "spatial"),
                    ("logits", "logits_bias" if logits_bias else "logits")):
    scale = np.abs(expected[key]).max()
    np.testing.assert_allclose(out[name], expected[key], atol=1e-4 * scale, err_msg=name)


def test_inception_extractor_from_a_pth_file_is_deterministic(peer, tmp_path):
  model = peer[0]
  torch.save(model.state_dict(), tmp_path / "pt_inception.pth")
  extractor = features.inception_extractor(tmp_path / "pt_inception.pth", batch_size=2)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  first, second = extractor(images), extractor(images)
  assert first.pool.shape == (3, 2048) and first.logits.shape == (3, 1008)
  for a, b in ((first.pool, second.pool), (first.spatial, second.spatial),
               (first.logits, second.logits)):
    np.testing.assert_array_equal(a, b)


def test_converter_lists_missing_unexpected_and_misshaped_keys(peer):
  state = {k: v.numpy() for k, v in peer[0].state_dict().items()}
  del state["Mixed_6d.branch1x1.conv.weight"]
  state["Mixed_6d.extra.weight"] = np.zeros(3, np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  with pytest.raises(ValueError) as e:
    pytorch_fid.from_pytorch_fid(state)
  message = str(e.value)
  assert "missing (1):\n  Mixed_6d.branch1x1.conv.weight (expected shape (192, 768, 1, 1))" \
      in message
  assert "unexpected (1):\n  Mixed_6d.extra.weight (3,)" in message
  assert "mis-shaped (1):\n  fc.bias: (1000,), expected (1008,)" in message


@pytest.mark.parametrize("size", [28, 64, 300])
def test_resize_matches_tf1_resize_bilinear(size):
  tf = pytest.importorskip("tensorflow")
  images = np.random.default_rng(size).uniform(0, 255, (2, size, size + 3, 3)).astype(np.float32)
  expected = tf.compat.v1.image.resize_bilinear(images, [299, 299]).numpy()
  got = np.asarray(inception.resize_bilinear_tf1(jnp.asarray(images), 299))
  np.testing.assert_allclose(got, expected, atol=1e-3)  # pixels in 0..255


def test_preprocess_repeats_grey_and_scales_as_the_graph():
  grey = np.random.default_rng(0).integers(0, 256, (1, 299, 299, 1), dtype=np.uint8)
  x = np.asarray(inception.preprocess(jnp.asarray(grey)))
  assert x.shape == (1, 299, 299, 3)
  expected = (grey.astype(np.float32) - 128) / 128  # 299 -> 299 is the identity
  for c in range(3):
    np.testing.assert_allclose(x[..., c:c + 1], expected, atol=1e-6)
