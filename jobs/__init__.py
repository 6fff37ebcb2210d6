"""Entry points for ``ray job submit``: screen, retrain, evaluate and query."""
