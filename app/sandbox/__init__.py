"""Child processes with resource limits: every read of an untrusted file happens here.

``runner`` forks one child per task (conversions) from a fork server; ``inspector`` keeps
long-lived children for header inspection. Both import only the engine: callers pass the
function to run by name, so this package never reaches up into the services that use it.
"""
