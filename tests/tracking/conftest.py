import uuid

import pytest

from rlsweep.tracking.store import Store


@pytest.fixture
def store(mlflow_store):
    """An MLflow experiment of the test's own in the session's SQLite store."""
    uri, artifacts = mlflow_store
    return Store(uri, f"exp-{uuid.uuid4().hex[:8]}", artifacts)
