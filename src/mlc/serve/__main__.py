"""``python -m mlc.serve [flags]``: the A1111 API server on this user's warm engine worker
(the same as ``mlc-txt2img --serve``)."""

import sys

from mlc.serve.server import main

sys.exit(main(prog="python -m mlc.serve"))
