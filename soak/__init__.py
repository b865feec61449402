"""The soak: the whole pool under faults and crashes, cycle after cycle, with
its invariants checked after every cycle.

    python -m soak [--profile short|long] [--seed N] [--json PATH] ...

``soak.profiles`` holds the two profiles (every limit a named option),
``soak.schedule`` the seeded plan (faults, kills, overlaps, restarts: a pure
function of the seed and the profile), ``soak.invariants`` the checks (pure
functions of what was read from the clouds and the database), and
``soak.runner`` runs it all with the real scripts against real local clouds.
"""
