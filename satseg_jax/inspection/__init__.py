"""``satseg inspect PATH``: what a scene, image/mask folder, patches folder or dataset holds.

Importing a labelled set goes wrong in ways that are cheap to see beforehand and
expensive to find afterwards: a mask colour nobody declared, one image without a mask, a
JPEG mask, a folder that mixes sizes or band counts, a CRS on half of the files. This
package answers those questions before ``satseg patches`` runs, in seconds (headers
only, decimated pixel reads; see :mod:`satseg_jax.inspection.common`).

Why a package above ``raster/`` and ``datasets/``: it reads both (scenes and folders
through the raster I/O, built datasets through the datasets readers), and raster/ must
never import datasets/. One module per kind of input:

- ``report``: :func:`inspect_path`, which decides what PATH is;
- ``rasters``, ``folders``, ``outputs``: one raster; image/mask folders; what satseg
  wrote (a patches folder, a dataset);
- ``mask_tally``: mask values/colours counted against classes.json;
- ``text``: :func:`format_inspection`, the text the CLI prints.

    from satseg_jax.inspection import format_inspection, inspect_path
    print(format_inspection(inspect_path("tiles/", masks="labels/")))
"""

from satseg_jax.inspection.report import inspect_path
from satseg_jax.inspection.text import format_inspection

__all__ = ["format_inspection", "inspect_path"]
