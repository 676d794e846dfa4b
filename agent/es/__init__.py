# SPDX-License-Identifier: MIT
"""Elasticsearch: the document (``schema``), the configuration from the original variables
(``config``), the shipper that never blocks (``shipper``) and what ``trackleak run`` calls
(``run``). The client library is imported only when shipping is enabled."""

from __future__ import annotations

from .config import EsConfig, EsConfigError
from .schema import DocMeta, document, documents, index_mapping

__all__ = ["DocMeta", "EsConfig", "EsConfigError", "document", "documents", "index_mapping", "ship_rows"]


def ship_rows(rows, meta, config=None):
    """Queue one document per row for CONFIG's index (default: from the environment's original
    variables); returns at once (see ``shipper.ship_rows``)."""
    from .shipper import ship_rows as _ship_rows

    return _ship_rows(rows, meta, config)
