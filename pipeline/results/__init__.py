"""The results store: Delta tables, the views and queries over them, upkeep and the run lock."""
