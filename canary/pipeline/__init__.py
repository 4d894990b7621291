"""The decision pipeline, Kafka-free: decode → windows → merge → judge → decisions. The live worker's stages
and replay both run it.

* :mod:`canary.pipeline.decode` — raw ``search_results`` records → outcomes (bounded, total);
* :mod:`canary.pipeline.recompute` — windows per partition, merged, judged, in the live stages' batches;
* :mod:`canary.pipeline.policies` — which policy judges which deployment (resolved in one place);
* :mod:`canary.pipeline.decisions` — the SLO agent's step: judged windows and the commands it issues;
* :mod:`canary.pipeline.loop` — the SLO agent's whole loop (decisions → commands → ledger);
* :mod:`canary.pipeline.run` — :func:`run_pipeline`, raw records in, windows/verdicts/decisions out.
"""
