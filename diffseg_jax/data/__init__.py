"""Datasets and input pipelines."""

from diffseg_jax.data.input_pipeline import ArraySource
from diffseg_jax.data.input_pipeline import DATASETS
from diffseg_jax.data.input_pipeline import load_source
from diffseg_jax.data.input_pipeline import train_batches
