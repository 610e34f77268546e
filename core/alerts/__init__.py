"""Alerts: rules per project, signals that fire them, signed webhook deliveries.

Signals (new_group, regression, spike, threshold) are written to one capped Redis stream, never by the ingest
script: the feed coalescer writes new_group and spike (core/feed.py), the worker that reopens a resolved group
writes regression, the threshold scan writes threshold (workers/alerts.py). The evaluator in the workers reads
the stream, matches rules, and enqueues one delivery task per (rule, group) outside its cooldown; the task
POSTs the signed webhook and is retried and dead-lettered like any task (core/retry.py).
"""
