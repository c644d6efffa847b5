"""``python -m dask_ipy``: the ``dask-ipy`` command."""

import sys

from .cli import main

sys.exit(main())
