"""``python -m chemozone.stress OUT``: write the stress cohort (see :func:`chemozone.stress.main`)."""

import sys

from ._cohort import main

sys.exit(main())
