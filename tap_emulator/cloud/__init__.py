"""The management service's core: device groups, members, accounts, roles, shares and keys, sans HTTP.

`CloudService` runs every rule over the management store; `domain` holds the records, the errors (one per
distinct seed error) and the per-seed profiles. The HTTP faces only map requests and errors.
"""

from .domain import *  # noqa: F403 - the domain vocabulary is this package's API
from .domain import __all__ as _domain_all
from .service import DEFAULT_PAGE_SIZE, CloudService

__all__ = [*_domain_all, "DEFAULT_PAGE_SIZE", "CloudService"]
