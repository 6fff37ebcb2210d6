"""Runtime plumbing shared by every job: storage (local disk or S3) and the Ray runtime."""
