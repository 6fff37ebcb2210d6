"""Developer tools: the scoring benchmark and the sample-archive builder (not part of any job)."""
