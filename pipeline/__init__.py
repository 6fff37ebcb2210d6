"""The scoring pipeline: list an MRI archive, decode and preprocess on CPU, infer, write Parquet results."""
