"""The PPO math and its state: networks, policy, losses, GAE, normalisation, the learner and the
checkpoint format. torch and numpy only: no Ray, no MLflow."""
