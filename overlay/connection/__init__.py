"""Connection layer: the sans-IO connection core (``_core``, ``_receive``, ``_types``,
``_ratelimit``)
and its thin async driver (``_driver``), the node-wide timer task (``_timers``) and the observer
hooks.
"""

__all__: list[str] = []
