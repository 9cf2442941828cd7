"""The `routeworker` command line.

numpy's OpenBLAS starts one thread per core whose idle threads spin; beside the encoder and the
search thread on a small machine they steal the CPU, and in a niced thread (head training) they
were seen to stall for minutes. Every routeworker process therefore uses one BLAS thread unless the
operator says otherwise — set here, before numpy is first imported.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
