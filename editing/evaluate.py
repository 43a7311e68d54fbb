"""``python -m editing.evaluate``: the evaluation's command line (``editing.evaluation.runner``)."""

import sys

from editing.evaluation.runner import main

if __name__ == "__main__":
    sys.exit(main())
