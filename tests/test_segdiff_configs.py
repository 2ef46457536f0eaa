"""The SegDiff configs at the reference's hyperparameters (configs/segdiff_*.py): they validate
and build SegDiff's network with exactly the parameter count of the reference architecture.

The reference count is computed here from the layer shapes of the SegDiff code
(tomeramit/SegDiff: improved_diffusion/unet.py UNetModel with rrdb, improved_diffusion/RRDB.py
RRDBNet), independently of this library's modules. Models are only traced (``jax.eval_shape``).
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from diffseg_jax import config as config_lib
from diffseg_jax.methods import segmentation

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load_config(name: str, method: str):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(method)
  config.data.manual_dir = "/folder/of/the/dataset"
  return config


def _conv(cin: int, cout: int, k: int) -> int:
  return cin * cout * k * k + cout


def _norm(c: int) -> int:
  return 2 * c


def _resblock(cin: int, cout: int, emb: int) -> int:
  """ResBlock without scale-shift norm: norm, conv, emb linear to cout, norm, conv, skip."""
  skip = _conv(cin, cout, 1) if cin != cout else 0
  return (_norm(cin) + _conv(cin, cout, 3) + emb * cout + cout + _norm(cout)
          + _conv(cout, cout, 3) + skip)


def _attention(c: int) -> int:
  return _norm(c) + 3 * c * c + 3 * c + c * c + c


def reference_rrdbnet(blocks: int, out: int, nf: int = 64, gc: int = 32) -> int:
  """RRDBNet(in_nc=3, out_nc=out, nf, nb=blocks, gc): conv_first, trunk, trunk_conv, HRconv,
  conv_last; an RRDB is 3 dense blocks of 5 convs."""
  dense = sum(_conv(nf + i * gc, gc, 3) for i in range(4)) + _conv(nf + 4 * gc, nf, 3)
  return _conv(3, nf, 3) + blocks * 3 * dense + 2 * _conv(nf, nf, 3) + _conv(nf, out, 3)


def reference_segdiff(size: int, mc: int, mult: tuple[int, ...], blocks: int,
                      attention_sizes: tuple[int, ...], rrdb: int, out: int = 1) -> int:
  """The reference UNetModel (1 mask channel in, ``out`` channels out) with its RRDBNet."""
  emb = 4 * mc
  attention_ds = {size // s for s in attention_sizes}
  total = mc * emb + emb + emb * emb + emb + reference_rrdbnet(rrdb, mc) + _conv(1, mc, 3)
  skips, ch, ds = [mc], mc, 1
  for level, m in enumerate(mult):
    for _ in range(blocks):
      total += _resblock(ch, m * mc, emb) + (_attention(m * mc) if ds in attention_ds else 0)
      ch = m * mc
      skips.append(ch)
    if level != len(mult) - 1:
      total += _conv(ch, ch, 3)
      skips.append(ch)
      ds *= 2
  total += 2 * _resblock(ch, ch, emb) + _attention(ch)
  for level, m in reversed(list(enumerate(mult))):
    for i in range(blocks + 1):
      total += _resblock(ch + skips.pop(), m * mc, emb)
      ch = m * mc
      total += _attention(ch) if ds in attention_ds else 0
      if level and i == blocks:
        total += _conv(ch, ch, 3)
        ds //= 2
  return total + _norm(ch) + _conv(mc, out, 3)


# The reference's settings: image_train_diff_{medical,vaih,city}.py and the README commands.
_DEEPER_256 = (1, 1, 1, 2, 2, 4, 4)
REFERENCE = {
    "segdiff_monuseg": dict(size=256, mc=128, mult=_DEEPER_256, blocks=3,
                            attention_sizes=(16, 8), rrdb=12),
    "segdiff_vaihingen": dict(size=256, mc=128, mult=_DEEPER_256, blocks=3,
                              attention_sizes=(16, 8), rrdb=6),
    "segdiff_cityscapes": dict(size=128, mc=128, mult=(1, 1, 2, 2, 4, 4), blocks=3,
                               attention_sizes=(16, 8), rrdb=15),
}


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def test_reference_count_of_a_known_model():
  # improved-diffusion's ResBlock 64 -> 128 with a 256-wide embedding, summed by hand:
  # norms 128 + 256, convs 64*128*9 + 128 and 128*128*9 + 128, linear 256*128 + 128,
  # 1x1 skip 64*128 + 128.
  assert _resblock(64, 128, 256) == 128 + 256 + 73856 + 147584 + 32896 + 8320
  # ESRGAN's RRDBNet with 23 blocks, nf=64, gc=32 and 3 output channels has 16,697,987
  # parameters (the published RRDB_ESRGAN_x4 minus its two upsampling convs, 2 * 36,928).
  assert reference_rrdbnet(23, 3) == 16_697_987 - 2 * 36_928


@pytest.mark.parametrize("method", ["segdiff", "supervised"])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_config_validates_and_builds_the_reference_network(name, method):
  config = load_config(name, method)
  config_lib.validate(config)
  model = segmentation.make_model(config)
  params = jax.eval_shape(model.init, jax.random.key(0))
  ref = REFERENCE[name]
  # SegDiff outputs the one-channel binary mask's noise as the reference; the supervised
  # baseline outputs two class logits from the same network.
  out = 1 if method == "segdiff" else 2
  assert _count(params["image_encoder"]) == reference_rrdbnet(ref["rrdb"], ref["mc"])
  assert _count(params) == reference_segdiff(**ref, out=out)
