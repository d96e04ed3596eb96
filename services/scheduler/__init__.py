"""Scheduler: jobs on the virtual pool, their queue and their state events."""
