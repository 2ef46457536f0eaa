"""One module per method: what it trains (its loss) and how it predicts (its sampler)."""
