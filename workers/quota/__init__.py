"""Every limit the account imposes, held across a fleet: submit rate, slots, query budget, cooldown.

Each mechanism has a Redis implementation (atomic, one Lua script per operation, shared by every worker on
every host) and an in-memory one (one process; the tests run the same bodies against both):

- `rate.py`: a GCRA limiter that answers "go" or "wait N s" (the submit rate per scope);
- `slots.py`: a leased semaphore of job ids (the tasks at once per scope, plus a small server-side queue);
- `budget.py`: the query budget per account, shared by every poll of every model;
- `cooldown.py`: the pause after a 429, seen by every worker at once, and the additive-increase /
  multiplicative-decrease factor on the effective submit rate (and, without a queue upstream, the slot count);
- `durations.py`: how long each scope's tasks run and wait upstream, learned by the fleet (what polls are
  placed by);
- `watch_board.py`: which worker watches an account's task list, and when it last did so well.

`quota.py` puts them together for the stages; `scopes.py` says which limits apply to a scope.
"""
