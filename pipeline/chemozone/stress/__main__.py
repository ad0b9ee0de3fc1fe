"""``python -m chemozone.stress OUT``: write the stress cohort (see :func:`chemozone.stress.main`)."""

import sys

from ._cohort import main

if __name__ == "__main__":
    sys.exit(main())
