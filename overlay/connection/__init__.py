"""Connection layer: the sans-IO connection core (``_core``, ``_receive``, ``_channels``,
``_infosync``, ``_types``, ``_ratelimit``) and its thin async driver (``_driver``), the node-wide
timer task (``_timers``), the observer hooks, the per-connection round-trip meter (``_meter``)
and the attempt outcomes (``_outcome``).
"""

__all__: list[str] = []
