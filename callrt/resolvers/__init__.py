"""Resolvers: where the replicas of a component are, as a versioned set of endpoints.

The contract is Service Weaver's: ``await resolve(None)`` returns the current
endpoints at once; ``await resolve(version)`` blocks until a newer set exists
and returns it, or returns the same version to mean "nothing new, ask again
later". A constant resolver (``is_constant()``) is asked once.
"""

from ._base import ConstantResolver, Resolver, Version
from ._dns import DNSResolver
from ._unixdir import UnixDirectoryResolver

__all__ = ("ConstantResolver", "DNSResolver", "Resolver", "UnixDirectoryResolver", "Version")
