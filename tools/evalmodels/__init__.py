"""Training scripts of the small real models the evaluator measures accuracy with.

Each module trains one model deterministically for a seed with numpy alone, exports it to ONNX
and writes it, its card and its held-out labelled sample set under
``services/evaluator/data/models/<name>/``:

- ``python -m tools.evalmodels.digits``: image classification on scikit-learn's digits.
- ``python -m tools.evalmodels.asr``: spoken digits and commands synthesized with espeak-ng.
- ``python -m tools.evalmodels.textfix``: a character-level word corrector on a Debian word list.

Training never runs in ``make test``; the runtime needs neither scikit-learn nor espeak-ng.
"""

import os

# One BLAS thread: on a shared two-core machine OpenBLAS's spinning threads made a training
# step 5x slower than one thread, and a single thread sums in one fixed order, so a seed gives
# the same weights every run. Set before numpy is first imported by a training script.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
