"""Closed forms of the papers the tool reproduces (pure float64 functions, no models): the two-layer linear network
of seed 002 Sec. 5 (:mod:`.linear_net`)."""
