"""The scoring stages: decoding and preprocessing, inference actors, slices into series."""
