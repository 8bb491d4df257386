"""Child processes with resource limits: every read of an untrusted file happens here.

``runner`` forks one child per call (conversions) from a fork server; ``pool`` keeps
long-lived children for calls that must answer at once. Both run a function the caller
names (a top-level ``function(payload, emit)``) and know no use case: this package never
reaches up into the services that use it.
"""
