"""The decision pipeline, Kafka-free: policies → windows → judge → decisions.

* :mod:`canary.pipeline.policies` — which policy judges which deployment (resolved in one place);
* :mod:`canary.pipeline.decisions` — the SLO agent's step: judged windows and the commands it issues;
* :mod:`canary.pipeline.run` — :func:`run_pipeline`, raw records in, windows/verdicts/decisions out.
"""
