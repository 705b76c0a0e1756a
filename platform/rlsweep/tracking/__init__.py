"""MLflow: where the store is, the `Tracker` (the only MLflow client), how a run ended, the Tune
callback that drives the tracker, and a sweep's parent run with its report."""
