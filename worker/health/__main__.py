"""``python -m worker.health [/livez|/readyz|/metrics]``: the container health check."""

import sys

from worker.health.probe import main

sys.exit(main())
