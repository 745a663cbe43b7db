"""Input and output: models, the hub, corpora, the cache, atomic files."""
