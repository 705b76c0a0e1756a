"""One module per command (train, sweep and resume, best, evaluate, ui): each tells its whole story and
returns an outcome that `rlsweep.cli` prints."""
