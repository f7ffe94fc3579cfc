"""The command-line layer: absl flags -> config -> one library call -> one JSON line.

``scratchdet <command>`` (``cli/main.py``) and ``python tools/<command>.py`` run the same ``run()``.
The only part of the package that imports absl flags.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off the console
