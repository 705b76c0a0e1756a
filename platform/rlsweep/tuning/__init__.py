"""Ray Tune: the Trainable adapter, the Optuna searcher, the Ray session, the stop rule, the live line,
and what keeps a sweep directory safe to resume (signing, checkpoint retention, shared storage)."""
