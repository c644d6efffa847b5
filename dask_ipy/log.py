"""The package's logger: every module logs to "dask_ipy" (or a child of it), so one
``logging.getLogger("dask_ipy")`` set-up governs the scheduler, workers and clients."""

import logging

logger = logging.getLogger("dask_ipy")
