"""Data in: datasets, backbones, extraction, pooling, the feature cache, the generic format and its
checks, dataset -> features. Imports core, engine and space."""
