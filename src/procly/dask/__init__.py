"""procly on a Dask cluster: the same Pool API when one machine is not enough.

    from procly.dask import Pool
    with Pool(address="tcp://scheduler:8786") as pool:   # or Pool(client=client), or Pool(4): a local cluster
        print(pool.map(f, range(100)))

``procly.Pool(backend="dask", address=...)`` is the same thing. Needs the ``dask``
extra (``pip install 'procly[dask]'``) here and procly installed on the workers.
Importing procly never imports Dask; importing this module does.
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("procly.dask needs Dask distributed: pip install 'procly[dask]'") from exc

from ._executor import Executor as Executor
from ._pool import Pool as Pool

__all__ = ["Executor", "Pool"]

Pool.__module__ = __name__
Executor.__module__ = __name__
