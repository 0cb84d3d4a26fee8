"""The Ray seam: the only sub-package that imports ray.

    connect.py   starting or joining Ray, cancellation, Ray's own figures (worker memory, spill)
    graph.py     Analysis: what a run asks of Ray (probe the videos, score their segments), and the
                 Ray Data graphs over the stages (the GPU layout, fervid eval)
    pool.py      plain actors for the one-stage CPU layout: they probe the videos, then run segments
    submit.py    fervid submit / fervid jobs (Ray's Job Submission API)
    client.py    fervid run --address ray://: the run as one Ray task in the cluster
    train.py     fervid finetune on several workers (Ray Train)

Stages, decoders, models, the results store, SQL and the report know nothing of Ray; they are plain
callables and functions that these modules compose (as datatrove's executors compose its steps).
"""
