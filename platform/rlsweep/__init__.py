"""rlsweep: tune reinforcement-learning hyperparameters with PPO on Ray Tune, Optuna and MLflow."""

__version__ = "0.1.0"
