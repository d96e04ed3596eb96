"""The scheduling policies, each behind ``pocgrid.sched.policy.Policy``; see docs/scheduling.md."""
