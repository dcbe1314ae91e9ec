"""Getting scenes from STAC catalogues: search (``search.py``), download of whole files
or AOI windows (``download.py``), the manifest ``satseg compose --item`` reads
(``manifest.py``), areas of interest (``aoi.py``) and credentials kept out of every
output (``auth.py``).

Why a package of its own: it is the only part of satseg that talks to the network; the
HTTP clients (pystac-client, requests) are imported only in here, inside functions, so
the rest of satseg imports and runs offline.
"""
