"""Respecting recipients by default (issue 16 items 3, 4; docs/compliance.md).

keywords     stop/start keywords: the defaults and how an inbound text matches one (pure)
quiet_hours  a recipient's local time zone and when a quiet window holds a message (pure)
policy       a client's policy: defaults, reading it, validating and storing changes
opt_outs     the suppression list: the send path's refusal, inbound keywords, the API's
             list/add/remove, and the `sms.opted_out` / `sms.opted_in` events
"""
