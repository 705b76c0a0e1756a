"""Resuming sweeps started by an older rlsweep: the names their Tune state holds, where they are now.

Tune pickles the run's callbacks, stopper and trial-folder function into a sweep directory (by module
and name), and `rlsweep resume` unpickles them. Until the package took its folders (December 2026)
those lived in top-level modules (`rlsweep.callback`, `rlsweep.parent_run`, `rlsweep.tuning`'s
functions, ...). `accept_moved_names` points those names at today's, for the one process that
resumes; nothing else looks them up.
"""

from __future__ import annotations

import sys


def accept_moved_names() -> None:
    """Makes every module and name an older sweep's pickles refer to resolve to today's."""
    import rlsweep.tracking as tracking_package
    import rlsweep.tuning as tuning_package
    from rlsweep.tracking import callback, parents, store
    from rlsweep.tuning import integrity, progress, retention, searcher, signing, stopper, trainable

    for old, module in (("rlsweep.callback", callback), ("rlsweep.parent_run", parents),
                        ("rlsweep.integrity", integrity), ("rlsweep.retention", retention),
                        ("rlsweep.trainable", trainable), ("rlsweep.searcher", searcher)):
        sys.modules.setdefault(old, module)
    moved = {tracking_package: {"Store": store.Store},
             tuning_package: {"TrialStopper": stopper.TrialStopper, "ProgressLine": progress.ProgressLine,
                              "SignTuneState": signing.SignTuneState, "trial_dirname": trainable.trial_dirname,
                              "trainable_for": trainable.trainable_for}}
    for package, names in moved.items():
        for name, value in names.items():
            if not hasattr(package, name):
                setattr(package, name, value)
