"""One module per method: what it trains (its loss) and how it predicts (its sampler)."""

import ml_collections


def make_model(config: ml_collections.ConfigDict):
  """The model of ``config.method``: a ``generation.GenerationModel``, or a
  ``segmentation.SegDiffModel`` / ``SupervisedModel``."""
  # pylint: disable=import-outside-toplevel
  from diffseg_jax.methods import generation
  from diffseg_jax.methods import segmentation
  if config.method == "generation":
    return generation.GenerationModel(config)
  return segmentation.make_model(config)
