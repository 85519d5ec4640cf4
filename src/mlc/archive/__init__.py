"""`mlc export` and `mlc import`: a container as one file, and back.

Modules: :mod:`.fileformat` (the file: header, members, sums; reading and writing),
:mod:`.folders` (host folder contents, carried only when asked), :mod:`.exporting` and
:mod:`.importing` (the two commands' library calls). The Docker side (commit, save only the
layers above the base image, load) is :mod:`mlc.containers.snapshot`.
"""

from mlc.archive.exporting import Exported, export_container
from mlc.archive.fileformat import FORMAT
from mlc.archive.importing import Imported, import_container

__all__ = ["FORMAT", "Exported", "Imported", "export_container", "import_container"]
