"""The radiologist's review app: the worklist of flagged cases, each case's page, the verdicts, and on-demand
scoring, served by Ray Serve.

``verdicts`` (the append-only ``reviews`` Delta table beside the results tables), ``worklist`` (what there is to
review, from the committed tables and the verdicts), ``cases`` (one case drawn with the morning report's pictures),
``scoring`` (an uploaded file scored as the nightly job scores it), ``pages`` (the HTML), ``access`` (who is
answered: the bearer token, loopback, same origin) and ``serving`` (the Ray Serve deployments: the FastAPI ingress,
the batched model, the heat maps).
"""
