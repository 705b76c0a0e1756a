"""One trial's iterations: samplers and evaluators stepping environments, the worker group (the only
Ray caller for them), learner actors, and the Ray-free `Training` spine that drives one PPO iteration."""
